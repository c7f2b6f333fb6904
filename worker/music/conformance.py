"""Golden-fixture conformance runner: `python -m worker.music.conformance DIR`.

DIR has the layout of the shared HeartMuLa fixtures: `cases.json`, `cases/<id>.safetensors`, a checkpoint
folder (`checkpoint_dir` in cases.json) and optionally `flavors.json`. Every case of cases.json is run and
every reference tensor and expectation it lists is compared; a tensor or expectation the runner cannot
produce is a failure, never a skip. Prints `PASS <id>` / `FAIL <id>: ...` per case, then `N passed, M failed`,
and exits 0 only when all pass.

Sampled cases reproduce the reference's global-RNG order with the legacy exponential of SPEC §5, and the
codec runs with `reference_quirks` (unused noise draws, the T=424-style padding test, float lengths).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from worker.music.checkpoint import load_codec, load_gen_config, load_lm, validate_layout
from worker.music.codec import HeartCodec, onednn_disabled, solve_euler
from worker.music.config import GenConfig, LMConfig, read_json
from worker.music.lm import HeartMuLa
from worker.music.sampler import Exponential, TopKSampler, legacy_exponential, race, topk_probs
from worker.music.tokenizer import PromptEncoder

ATOL = 1e-4  # LM logits/hidden states and codec tensors
WAV_ATOL = 2e-3  # waveforms: a latent next to a round(9x)/9 boundary may flip (SPEC §6)
STAT_RTOL = 1e-4  # per-channel waveform sums and sums of squares

_WAV_SLICE = re.compile(r"wav_slice_(\d+)")


@dataclass
class Produced:
    """What a case run computed: tensors by the case's names, and scalar facts matched against `expect`."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Fixtures:
    """The fixture folder; models load on first use, so a failure to load fails only the cases needing it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.meta = read_json(root / "cases.json")
        flavors_file = root / "flavors.json"
        self.flavors = read_json(flavors_file).get("flavors", {}) if flavors_file.is_file() else {}
        self.layout = validate_layout(
            root / self.meta.get("checkpoint_dir", "ckpt"), self.meta.get("pipeline", {}).get("version")
        )

    @functools.cached_property
    def gen(self) -> GenConfig:
        return load_gen_config(self.layout.gen_config)

    @functools.cached_property
    def lm_config(self) -> LMConfig:
        return LMConfig.from_dict(read_json(self.layout.lm_dir / "config.json"), self.flavors)

    @functools.cached_property
    def prompts(self) -> PromptEncoder:
        return PromptEncoder.from_file(self.layout.tokenizer, self.gen)

    @functools.cached_property
    def lm(self) -> HeartMuLa:
        return load_lm(
            self.layout.lm_dir, device=torch.device("cpu"), dtype=torch.float32, flavors=self.flavors
        )

    @functools.cached_property
    def codec(self) -> HeartCodec:
        return load_codec(self.layout.codec_dir, device=torch.device("cpu"))


# --- case kinds ---------------------------------------------------------------------------------------------


def run_preprocess(fx: Fixtures, inputs: dict[str, Any], _: dict[str, torch.Tensor]) -> Produced:
    prompt = fx.prompts.encode(inputs["tags"], inputs["lyrics"])
    batch = 2 if inputs["cfg_scale"] != 1.0 else 1
    length = prompt.length
    return Produced(
        tensors={
            "tokens": prompt.tokens.expand(batch, -1, -1),
            "tokens_mask": prompt.mask.expand(batch, -1, -1),
            "muq_embed": torch.zeros(batch, fx.lm_config.muq_dim),
            "pos": torch.arange(length).expand(batch, -1),
            "muq_idx": torch.full((batch,), prompt.muq_idx),
        },
        facts={
            "muq_idx": [prompt.muq_idx] * batch,
            "prompt_len": length,
            "tags_ids": prompt.tags_ids,
            "lyrics_ids_raw": prompt.lyrics_ids,
        },
    )


def run_sampler(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    torch.manual_seed(inputs["seed"])
    probs = topk_probs(ref["logits"], inputs["topk"], inputs["temperature"])
    q = legacy_exponential(probs)
    return Produced(tensors={"probs": probs, "exponential_q": q, "token": race(probs, q)})


class _Recorder:
    """Collects the LM's traced intermediates per frame step and stacks them as the fixtures store them."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {}

    def __call__(self, name: str, value: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(value.detach().clone())

    def recording(self, exponential: Exponential) -> Exponential:
        def draw(like: torch.Tensor) -> torch.Tensor:
            q = exponential(like)
            self("exponential_q", q)
            return q

        return draw

    def stacked(self, calls: int) -> dict[str, torch.Tensor]:
        out = {}
        for name, values in self.values.items():
            per_call = len(values) // calls
            stacked = torch.stack(values)
            out[name] = stacked if per_call == 1 else stacked.view(calls, per_call, *values[0].shape)
        return out


def run_teacher_forced(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    forced = ref["forced_frames"]
    n_frames = int(inputs["n_frames"])
    prompt = fx.prompts.encode(inputs["tags"], inputs["lyrics"])
    recorder = _Recorder()
    calls = 0

    def force(logits: torch.Tensor, codebook: int) -> torch.Tensor:
        nonlocal calls
        frame = calls // fx.lm_config.audio_num_codebooks
        calls += 1
        return torch.full((logits.shape[0], 1), int(forced[codebook, frame]), dtype=torch.int32)

    cfg = float(inputs["cfg_scale"])
    out = fx.lm.generate(
        prompt,
        n_steps=n_frames - 1,
        cfg_scale=cfg,
        sampler=force,
        stop_id=fx.gen.audio_eos_id,
        empty_id=fx.gen.empty_id,
        trace=recorder,
    )
    batch = 2 if cfg != 1.0 else 1
    tensors = recorder.stacked(out.calls)
    tensors["prompt_tokens"] = prompt.tokens.expand(batch, -1, -1)
    tensors["prompt_tokens_mask"] = prompt.mask.expand(batch, -1, -1)
    return Produced(tensors=tensors, facts={"n_generate_frame_calls": out.calls})


def run_generate(fx: Fixtures, inputs: dict[str, Any], _: dict[str, torch.Tensor]) -> Produced:
    prompt = fx.prompts.encode(inputs["tags"], inputs["lyrics"])
    recorder = _Recorder()
    sampler = TopKSampler(
        int(inputs["topk"]), float(inputs["temperature"]), recorder.recording(legacy_exponential)
    )
    torch.manual_seed(int(inputs["seed"]))
    out = fx.lm.generate(
        prompt,
        n_steps=int(inputs["max_audio_length_ms"]) // 80,
        cfg_scale=float(inputs["cfg_scale"]),
        sampler=sampler,
        stop_id=fx.gen.audio_eos_id,
        empty_id=fx.gen.empty_id,
        trace=recorder,
    )
    tensors = recorder.stacked(out.calls)
    tensors["frames"] = out.frames
    facts = {
        "n_frames": out.frames.shape[1],
        "stopped_on_eos": out.stopped_on_eos,
        "n_generate_frame_calls": out.calls,
        "frames_dtype": str(out.frames.dtype).removeprefix("torch."),
    }
    return Produced(tensors=tensors, facts=facts)


def _global_randn(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape)


def run_end_to_end(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    produced = run_generate(fx, inputs, ref)  # the global RNG continues into the codec, as in the reference
    wav = fx.codec.detokenize(produced.tensors["frames"], noise=_global_randn, reference_quirks=True).wav
    produced.tensors["wav"] = wav
    produced.facts["wav_samples"] = wav.shape[1]
    return produced


def run_rvq(fx: Fixtures, _: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    fm = fx.codec.flow_matching
    with torch.inference_mode():
        rvq = fm.vq_embed(ref["codes"])
        cond = fm.cond_feature_emb(rvq)
        upsampled = fm.condition(ref["codes"])
    return Produced(tensors={"rvq_out": rvq, "cond": cond, "cond_upsampled": upsampled})


def run_estimator(fx: Fixtures, _: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    recorded: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        out = fx.codec.flow_matching.estimator(ref["x"], ref["t"], trace=recorded.__setitem__)
    return Produced(tensors={"out": out, **recorded})


def run_euler(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    t_span = torch.linspace(0, 1, int(inputs["num_steps"]) + 1)
    with torch.inference_mode():
        out = solve_euler(
            fx.codec.flow_matching.estimator,
            ref["noise"],
            ref["incontext_x"],
            int(inputs["incontext_length"]),
            t_span,
            ref["mu"],
            float(inputs["guidance_scale"]),
        )
    return Produced(tensors={"out": out})


def run_scalar_decode(fx: Fixtures, _: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    with torch.inference_mode():
        return Produced(tensors={"out": fx.codec.scalar_model.decode(ref["latent"])})


def run_detokenize(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    torch.manual_seed(int(inputs["seed"]))
    result = fx.codec.detokenize(ref["frames"], noise=_global_randn, reference_quirks=True)
    wav = result.wav.double()
    tensors = {"wav": result.wav}
    tensors.update({f"window{k}_latents": lat for k, lat in enumerate(result.window_latents)})
    facts = {
        "n_windows": len(result.window_latents),
        "samples": result.wav.shape[1],
        "channels": result.wav.shape[0],
        "sum": wav.sum(dim=1).tolist(),
        "sum_sq": (wav * wav).sum(dim=1).tolist(),
        "max_abs": wav.abs().amax(dim=1).tolist(),
    }
    return Produced(tensors=tensors, facts=facts)


Runner = Callable[[Fixtures, dict[str, Any], dict[str, torch.Tensor]], Produced]

# kind -> (runner, names in the case file that are inputs rather than results)
KINDS: dict[str, tuple[Runner, frozenset[str]]] = {
    "preprocess": (run_preprocess, frozenset()),
    "sampler": (run_sampler, frozenset({"logits"})),
    "lm_teacher_forced": (run_teacher_forced, frozenset({"forced_frames"})),
    "generate": (run_generate, frozenset()),
    "end_to_end": (run_end_to_end, frozenset()),
    "codec_rvq": (run_rvq, frozenset({"codes"})),
    "codec_estimator": (run_estimator, frozenset({"x", "t"})),
    "codec_euler": (run_euler, frozenset({"noise", "incontext_x", "mu"})),
    "codec_scalar_decode": (run_scalar_decode, frozenset({"latent"})),
    "detokenize": (run_detokenize, frozenset({"frames"})),
}

# Expectations that describe the reference data rather than a result (checked through the tensors).
_DESCRIPTIVE = frozenset({"slice_starts", "slice_len"})


# --- comparison ---------------------------------------------------------------------------------------------


def compare_tensor(name: str, actual: torch.Tensor, expected: torch.Tensor) -> list[str]:
    if tuple(actual.shape) != tuple(expected.shape):
        return [f"{name} shape {tuple(actual.shape)} != {tuple(expected.shape)}"]
    if not expected.is_floating_point():
        diff = (actual.long() != expected.long()).nonzero()
        if diff.numel():
            first = tuple(diff[0].tolist())
            count = diff.shape[0]
            return [
                f"{name} differs at {count} of {expected.numel()} positions "
                + f"(first at {first}: {actual[first].item()} != {expected[first].item()})"
            ]
        return []
    is_wav = name == "wav" or _WAV_SLICE.fullmatch(name) is not None
    atol = WAV_ATOL if is_wav else ATOL
    err = (actual.double() - expected.double()).abs()
    if not torch.isfinite(actual).all():
        return [f"{name} has non-finite values"]
    problems = []
    if err.numel() and err.max() > atol:
        where = tuple(torch.unravel_index(err.argmax(), err.shape))
        problems.append(
            f"{name} max |diff| {err.max().item():.3g} at {tuple(int(i) for i in where)} "
            f"(atol {atol:g}, {int((err > atol).sum())} values over)"
        )
    if name == "wav":
        a, e = (actual.double() ** 2).sum(-1), (expected.double() ** 2).sum(-1)
        rel = ((a - e).abs() / e.abs().clamp_min(1e-12)).max().item()
        if rel > STAT_RTOL:
            problems.append(f"wav sum_sq rel diff {rel:.3g} (rtol {STAT_RTOL:g})")
    return problems


def compare_fact(name: str, actual: Any, expected: Any) -> list[str]:
    if name in ("sum", "sum_sq", "max_abs"):
        a, e = torch.tensor(actual, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
        if a.shape != e.shape:
            return [f"{name} {actual} != {expected}"]
        if name == "max_abs":
            worst = (a - e).abs().max().item()
            return [f"max_abs differs by {worst:.3g} (atol {WAV_ATOL:g})"] if worst > WAV_ATOL else []
        worst = ((a - e).abs() / e.abs().clamp_min(1e-12)).max().item()
        return [f"{name} rel diff {worst:.3g} (rtol {STAT_RTOL:g})"] if worst > STAT_RTOL else []
    return [] if actual == expected else [f"{name} {actual!r} != {expected!r}"]


def run_case(fx: Fixtures, case: dict[str, Any]) -> list[str]:
    kind = case.get("kind")
    if kind not in KINDS:
        return [f"unknown case kind {kind!r}"]
    runner, input_names = KINDS[kind]
    reference = load_file(str(fx.root / case["file"]))
    for name, spec in case.get("tensors", {}).items():
        if name not in reference:
            return [f"{case['file']} lacks tensor {name}"]
        shape = list(reference[name].shape)
        if shape != list(spec["shape"]):
            return [f"{case['file']}: {name} has shape {shape}, cases.json says {spec['shape']}"]
    produced = runner(fx, case.get("inputs") or {}, reference)
    problems: list[str] = []
    for name in case.get("tensors", {}):
        if name in input_names:
            continue
        actual = produced.tensors.get(name)
        match = _WAV_SLICE.fullmatch(name)
        if actual is None and match and "wav" in produced.tensors:
            start = int(match.group(1))
            actual = produced.tensors["wav"][:, start : start + reference[name].shape[-1]]
        if actual is None:
            problems.append(f"cannot produce tensor {name!r} for kind {kind}")
            continue
        problems += compare_tensor(name, actual, reference[name])
    for name, expected in (case.get("expect") or {}).items():
        if name in _DESCRIPTIVE:
            continue
        if name not in produced.facts:
            problems.append(f"cannot check expectation {name!r} for kind {kind}")
            continue
        problems += compare_fact(name, produced.facts[name], expected)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", type=Path, help="folder with cases.json, cases/ and the checkpoint")
    args = parser.parse_args(argv)
    try:
        fx = Fixtures(args.fixtures)
    except (OSError, ValueError) as exc:  # missing files, broken JSON, unknown flavors
        print(f"cannot read the fixtures in {args.fixtures}: {exc}", file=sys.stderr)
        return 2
    passed = failed = 0
    with onednn_disabled():  # as the fixtures were produced
        for case in fx.meta.get("cases", []):
            case_id = case.get("id", "?")
            try:
                problems = run_case(fx, case)
            except Exception as exc:  # noqa: BLE001 (a crash is this case's failure, not the run's)
                last = traceback.extract_tb(exc.__traceback__)[-1]
                problems = [f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"]
            if problems:
                failed += 1
                print(f"FAIL {case_id}: " + "; ".join(problems), flush=True)
            else:
                passed += 1
                print(f"PASS {case_id}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
