"""Every GPU figure in one run: each step a subprocess with its own time cap, all within one budget.

`bash bench/gpu/run.sh` calls this after installing the carried wheels. The steps, cheapest and most wanted
first (the compilations, the slowest, come last so a tight budget loses them first):

    0 models       real-size random-weight SDXL and HeartMuLa folders (bench/gpu/real_size.py)
    1 cuda tests   pytest -m cuda (tests/test_cuda_*.py) on those folders
    2 music        bench/music_rtf.py: LM frames/s and RTF per decode mode, 30 s song with CFG; the codec
    3 SDXL         bench/image_speed.py: 1024², 30 steps, s/image and peak VRAM, eager and compiled
    4 training     bench/train_steps.py: SDXL-sized UNet, 1024², bf16, rank 16: steps/s and peak VRAM
    5 load         bench/load_speed.py: load time against a sequential read of the same bytes

`--cpu-smoke` runs the same steps at tiny size on the CPU. A step that fails, overruns its cap or finds no time
left is a row with that status; the others still run; the exit code is 1 when any step is not ok. The table is
printed and written as JSON ($OUT/gpu_report.json when $OUT is set, else bench/gpu/last_report.json) after
every step, so a run cut short still leaves what it measured. Each step's output is kept in `<report dir>/logs/`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MIN_STEP_S = 10.0  # a step is not started with less time than this left (unless its own cap is shorter)
LOG_TAIL = 1200

Figures = dict[str, Any]


@dataclass
class Step:
    name: str
    command: list[str]
    cap_s: float
    parse: Callable[[str], Figures]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    step: str
    status: str  # ok, failed, timeout, skipped
    seconds: float
    figures: Figures = field(default_factory=dict)
    error: str = ""


def last_json(stdout: str) -> Figures:
    """The figures a bench prints as its last JSON line."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def pytest_counts(stdout: str) -> Figures:
    """`passed`/`failed`/`skipped`... from pytest's summary line, and the failed tests' names."""
    summary = [line for line in stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if not summary:
        raise ValueError("no pytest summary line")
    counts: Figures = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary[-1])}
    failed = [line.split(" ", 2)[1] for line in stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if failed:
        counts["failing"] = failed
    return counts


_RTF_LINE = re.compile(
    r"^(LM|codec)\s*: (\d+) frames(?: \([^)]*\))? in ([\d.]+) s = ([\d.]+) frames/s, RTF ([\d.]+)",
    re.MULTILINE,
)


def music_figures(stdout: str) -> Figures:
    """bench/music_rtf.py's `LM : ...` / `codec : ...` lines."""
    found = _RTF_LINE.findall(stdout)
    if not found:
        raise ValueError("no LM or codec line in the output")
    figures: Figures = {}
    for part, frames, seconds, fps, rtf in found:
        key = part.lower()
        figures.update({f"{key}_frames": int(frames), f"{key}_s": float(seconds), f"{key}_fps": float(fps)})
        figures[f"{key}_rtf"] = float(rtf)
    return figures


_TRAIN_ROW = re.compile(
    r"^(tiny|sdxl)\s+\d+\s+(cached|per step)\s+(on|off)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+(\d+)\s+-?\d+\s+(\d+|-)",
    re.MULTILINE,
)
_TRAIN_FAILED = re.compile(r"^(?:tiny|sdxl)\s+\d+ failed: .*$", re.MULTILINE)


def training_figures(stdout: str, want_gpu: bool) -> Figures:
    """bench/train_steps.py's table: steps/s and peak memory per configuration."""
    failed = _TRAIN_FAILED.findall(stdout)
    if failed:
        raise ValueError("; ".join(failed))
    figures: Figures = {}
    for model, latents, ckpt, steps_per_s, peak_rss, peak_gpu in _TRAIN_ROW.findall(stdout):
        key = f"{model}_{'cached' if latents == 'cached' else 'encoded'}_ckpt_{ckpt}"
        figures[f"{key}_steps_per_s"] = float(steps_per_s)
        if model == "sdxl":
            figures[f"{key}_peak_gpu_mb"] = int(peak_gpu)
        else:
            figures[f"{key}_peak_rss_mb"] = int(peak_rss)
    if not figures:
        raise ValueError("no configuration rows in the output")
    if want_gpu and not any(key.startswith("sdxl") for key in figures):
        raise ValueError("no SDXL-sized GPU rows: the bench saw no CUDA device")
    return figures


def music_modes(help_text: str) -> list[tuple[str, list[str]]]:
    """The LM decode modes bench/music_rtf.py offers, read from its --help: (label, flags) each."""
    modes: list[tuple[str, list[str]]] = []
    choice = re.search(r"(--(?:decode|decode-mode|mode))\s+\{([^}]+)\}", help_text)
    if choice:
        modes += [(mode, [choice.group(1), mode]) for mode in choice.group(2).split(",")]
    else:
        modes.append(("eager", []))
    if "--compile" in help_text:
        modes.append(("compiled", ["--compile"]))
    return modes


def plan(smoke: bool, work: Path, python: str) -> list[Step]:
    bench = ROOT / "bench"
    models = work / "models"
    device = "cpu" if smoke else "cuda"
    song = (
        ["--size", "tiny", "--seconds", "2", "--codec-steps", "1"]
        if smoke
        else ["--size", "3b", "--seconds", "30"]
    )
    music = [python, str(bench / "music_rtf.py"), "--device", device, "--cfg", "1.5", *song]
    help_text = subprocess.run(
        [*music[:2], "--help"], capture_output=True, text=True, check=False, timeout=120
    ).stdout
    modes = music_modes(help_text)
    image = [
        python,
        str(bench / "image_speed.py"),
        "--model-dir",
        str(models / "sdxl-base"),
        "--device",
        device,
    ]
    image += ["--size", "64", "--steps", "2"] if smoke else ["--size", "1024", "--steps", "30"]
    # the smoke checks the compile plumbing (graph capture); inductor's C++ build of a UNet takes minutes on a CPU
    compiled = ["--compile", "default", *(["--backend", "eager"] if smoke else [])]
    train = [python, str(bench / "train_steps.py")]
    train += (
        ["--steps", "1", "--warmup", "0", "--tiny-resolution", "64", "--skip-gpu"]
        if smoke
        else ["--steps", "5"]
    )
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_cuda_*.py"))
    pytest = [python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", "cuda", *tests]

    steps = [
        Step(
            "0 models",
            [python, str(bench / "gpu" / "real_size.py"), "--root", str(models), "--device", device, "--size"]
            + ["tiny" if smoke else "real"],
            60 if smoke else 120,
            last_json,
        ),
        Step("1 cuda tests", pytest, 60 if smoke else 150, pytest_counts, {"GPU_BENCH_MODELS": str(models)}),
    ]
    eager_modes = [(label, flags) for label, flags in modes if label != "compiled"]
    steps += [
        Step(f"2 music LM {label}", [*music, "--part", "lm", *flags], 100, music_figures)
        for label, flags in eager_modes
    ]
    steps.append(Step("2 music codec", [*music, "--part", "codec"], 60, music_figures))
    steps.append(Step("3 SDXL eager", image, 60 if smoke else 90, last_json))
    steps.append(
        Step("4 LoRA training", train, 90 if smoke else 120, lambda out: training_figures(out, not smoke))
    )
    load = [python, str(bench / "load_speed.py"), "--device", device]
    load += ["--model", f"sdxl-base={models / 'sdxl-base'}", "--model", f"heartmula={models / 'heartmula'}"]
    steps.append(Step("5 load", load, 60 if smoke else 100, last_json))
    if not smoke and ("compiled", ["--compile"]) in modes:
        steps.append(Step("2 music LM compiled", [*music, "--part", "lm", "--compile"], 150, music_figures))
    steps.append(Step("3 SDXL compiled", [*image, *compiled], 60 if smoke else 180, last_json))
    return steps


def run_step(step: Step, seconds_left: float, log_dir: Path) -> Row:
    """Runs one step in its own process group, killed whole when it overruns its cap."""
    if seconds_left < min(step.cap_s, MIN_STEP_S):
        return Row(step.name, "skipped", 0.0, error="no time left in the budget")
    cap = min(step.cap_s, seconds_left)
    slug = re.sub(r"[^a-z0-9]+", "_", step.name.lower()).strip("_")
    out_path, err_path = log_dir / f"{slug}.out", log_dir / f"{slug}.err"
    started = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            step.command,
            stdout=out,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, **step.env},
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=cap)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the step's children (pytest, bench configs) go with it
            process.wait()
            code = None
    seconds = round(time.monotonic() - started, 1)
    stdout = out_path.read_text(errors="replace")
    tail = (stdout + err_path.read_text(errors="replace"))[-LOG_TAIL:]
    if code is None:
        return Row(step.name, "timeout", seconds, error=f"over its cap of {cap:.0f} s; log tail: {tail}")
    try:
        figures = step.parse(stdout)
    except (ValueError, IndexError, KeyError) as problem:
        figures, parse_error = {}, str(problem)
    else:
        parse_error = ""
    if code != 0 or parse_error:
        error = f"exit {code}" + (f", {parse_error}" if parse_error else "") + f"; log tail: {tail}"
        return Row(step.name, "failed", seconds, figures, error)
    return Row(step.name, "ok", seconds, figures)


def table(rows: list[Row]) -> str:
    width = max([len(row.step) for row in rows] + [4])
    lines = [f"{'step':<{width}}  {'status':<8} {'s':>6}  figures", "-" * (width + 60)]
    for row in rows:
        shown = ", ".join(f"{k}={v}" for k, v in row.figures.items())
        if row.status != "ok":
            shown = (shown + "; " if shown else "") + row.error.split("; log tail")[0]
        lines.append(f"{row.step:<{width}}  {row.status:<8} {row.seconds:>6.1f}  {shown}")
    return "\n".join(lines)


def device_name() -> str:
    """The GPU by nvidia-smi, and torch's version: no CUDA context here, the steps need all the memory."""
    import torch

    smi = shutil.which("nvidia-smi")
    query = [smi or "", "--query-gpu=name,memory.total", "--format=csv,noheader"]
    gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip() if smi else ""
    return f"{gpu or 'cpu'} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def run_all(steps: list[Step], budget_s: float, report: Path, meta: dict[str, Any]) -> list[Row]:
    log_dir = report.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    rows: list[Row] = []
    for step in steps:
        rows.append(run_step(step, deadline - time.monotonic(), log_dir))
        write_report(report, rows, meta)
    return rows


def write_report(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    payload = {**meta, "ok": all(row.status == "ok" for row in rows), "steps": [asdict(row) for row in rows]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the same steps at tiny size on the CPU")
    parser.add_argument(
        "--budget-s", type=float, default=440.0, help="all steps together (8 min with the set-up)"
    )
    parser.add_argument("--work", type=Path, help="where the models are built (default: a temp folder)")
    parser.add_argument("--only", action="append", help="run only the steps whose name contains this")
    args = parser.parse_args()
    out = os.environ.get("OUT")
    report = Path(out) / "gpu_report.json" if out else ROOT / "bench" / "gpu" / "last_report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    steps = plan(args.cpu_smoke, work, sys.executable)
    if args.only:
        steps = [step for step in steps if any(part in step.name for part in args.only)]
    meta = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "device": device_name(),
        "budget_s": args.budget_s,
    }
    rows = run_all(steps, args.budget_s, report, meta)
    print(f"{meta['mode']} on {meta['device']}")
    print(table(rows))
    print(f"report: {report}")
    return 0 if all(row.status == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
