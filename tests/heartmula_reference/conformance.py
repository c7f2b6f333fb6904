"""Golden-fixture conformance runner: `python -m tests.heartmula_reference.conformance DIR`.

DIR has the layout of the HeartMuLa fixtures (tests/fixtures/heartmula): `cases.json`,
`cases/<id>.safetensors`, a checkpoint folder (`checkpoint_dir` in cases.json) and optionally
`flavors.json`. Every case of cases.json (or each `--case ID`) is run and every reference tensor and
expectation it lists is compared; a tensor or expectation the runner cannot produce is a failure, never a
skip. Prints `PASS <id>` / `FAIL <id>: ...` per case, then `N passed, M failed`, and exits 0 only when all
pass. `--decode eager|static` picks the LM's frame loop (static, production's CPU default, if not given).

Sampled cases reproduce the reference's global-RNG order with the legacy exponential (docs/HEARTMULA.md
§5), and the codec runs the reference's window plan (`reference_codec`).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tests.heartmula_reference.cases import DECODES, KINDS, Fixtures
from worker.music.codec import onednn_disabled

ATOL = 1e-4  # LM logits/hidden states and codec tensors
WAV_ATOL = 2e-3  # waveforms: a latent next to a round(9x)/9 boundary may flip (docs/HEARTMULA.md §6)
STAT_RTOL = 1e-4  # per-channel waveform sums and sums of squares

_WAV_SLICE = re.compile(r"wav_slice_(\d+)")

# Expectations that describe the reference data rather than a result (checked through the tensors).
_DESCRIPTIVE = frozenset({"slice_starts", "slice_len"})


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
    parser.add_argument("--decode", choices=DECODES, default="static", help="the LM's frame loop")
    parser.add_argument("--case", action="append", help="run only this case id (repeatable)")
    args = parser.parse_args(argv)
    try:
        fx = Fixtures(args.fixtures, args.decode)
    except (OSError, ValueError) as exc:  # missing files, broken JSON, unknown flavors
        print(f"cannot read the fixtures in {args.fixtures}: {exc}", file=sys.stderr)
        return 2
    cases = [c for c in fx.meta.get("cases", []) if args.case is None or c.get("id") in args.case]
    passed = failed = 0
    with onednn_disabled():  # as the fixtures were produced
        for case in cases:
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
