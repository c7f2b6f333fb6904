"""The fixture folder and one runner per case kind: each computes, with the production modules, what a
case's reference file holds (tensors by the case's names, and facts matched against its `expect`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.heartmula_reference.legacy_rng import legacy_exponential
from tests.heartmula_reference.recording import Recorder, module_outputs
from tests.heartmula_reference.reference_codec import reference_detokenize
from worker.music.checkpoint import load_codec, load_gen_config, load_lm, validate_layout
from worker.music.codec import HeartCodec
from worker.music.flow_matching import solve_euler
from worker.music.lm import HeartMuLa, LMOutput, Sampler
from worker.music.model_config import GenConfig, LMConfig, read_json
from worker.music.sampler import TopKSampler, race, topk_probs
from worker.music.static_decode import generate_static
from worker.music.tokenizer import Prompt, PromptEncoder

# The LM decodes the fixtures can be run with (docs/HEARTMULA.md §2.6); "static" is production's on the CPU.
DECODES = ("static", "eager")


@dataclass
class Produced:
    """What a case run computed: tensors by the case's names, and scalar facts matched against `expect`."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Fixtures:
    """The fixture folder; models load on first use, so a failure to load fails only the cases needing it."""

    def __init__(self, root: Path, decode: str = "static") -> None:
        if decode not in DECODES:
            raise ValueError(f"decode must be one of {', '.join(DECODES)}")
        self.root = root
        self.decode = decode
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

    def generate(self, prompt: Prompt, n_steps: int, cfg_scale: float, sampler: Sampler) -> LMOutput:
        """The LM's frame loop in this run's decode."""
        args = {
            "n_steps": n_steps,
            "cfg_scale": cfg_scale,
            "sampler": sampler,
            "stop_id": self.gen.audio_eos_id,
            "empty_id": self.gen.empty_id,
        }
        if self.decode == "eager":
            return self.lm.generate(prompt, **args)
        return generate_static(self.lm, prompt, **args)


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


def run_teacher_forced(fx: Fixtures, inputs: dict[str, Any], ref: dict[str, torch.Tensor]) -> Produced:
    forced = ref["forced_frames"]
    n_frames = int(inputs["n_frames"])
    prompt = fx.prompts.encode(inputs["tags"], inputs["lyrics"])
    recorder = Recorder()
    calls = 0

    def force(logits: torch.Tensor, codebook: int) -> torch.Tensor:
        nonlocal calls
        frame = calls // fx.lm_config.audio_num_codebooks
        calls += 1
        return torch.full((logits.shape[0], 1), int(forced[codebook, frame]), dtype=torch.int32)

    cfg = float(inputs["cfg_scale"])
    with recorder.watching(fx.lm):
        out = fx.generate(prompt, n_frames - 1, cfg, recorder.sampler(force))
    batch = 2 if cfg != 1.0 else 1
    tensors = recorder.stacked(out.calls)
    tensors["prompt_tokens"] = prompt.tokens.expand(batch, -1, -1)
    tensors["prompt_tokens_mask"] = prompt.mask.expand(batch, -1, -1)
    return Produced(tensors=tensors, facts={"n_generate_frame_calls": out.calls})


def run_generate(fx: Fixtures, inputs: dict[str, Any], _: dict[str, torch.Tensor]) -> Produced:
    prompt = fx.prompts.encode(inputs["tags"], inputs["lyrics"])
    recorder = Recorder()
    sampler = TopKSampler(
        int(inputs["topk"]), float(inputs["temperature"]), recorder.exponential(legacy_exponential)
    )
    torch.manual_seed(int(inputs["seed"]))
    with recorder.watching(fx.lm):
        out = fx.generate(
            prompt,
            int(inputs["max_audio_length_ms"]) // 80,
            float(inputs["cfg_scale"]),
            recorder.sampler(sampler),
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
    wav = reference_detokenize(fx.codec, produced.tensors["frames"], _global_randn).wav
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
    est = fx.codec.flow_matching.estimator
    parts = {
        "proj_in_out": est.proj_in,
        "adaln": est.adaln_single,
        "block0_out": est.transformer_blocks[0],
        "connection_proj_out": est.connection_proj,
    }
    with torch.inference_mode(), module_outputs(parts) as seen:
        out = est(ref["x"], ref["t"])
    mod, embedded = seen.pop("adaln")
    tensors = {"out": out, "adaln_timestep_mod": mod, "adaln_embedded_timestep": embedded, **seen}
    return Produced(tensors=tensors)


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
    result = reference_detokenize(fx.codec, ref["frames"], _global_randn)
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
