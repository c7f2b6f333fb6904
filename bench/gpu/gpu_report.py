"""Every GPU figure in one run: each step a subprocess with its own time cap, all within one budget.

`bash bench/gpu/run.sh` calls this after installing the carried wheels. The steps, in running order (the two
compilations, the slowest and least needed, come last, so a tight budget loses them first):

    0 models               real-size random-weight SDXL and HeartMuLa folders (bench/gpu/real_size.py)
    1 cuda tests           pytest -m cuda (each tests/ file with a cuda case) on those folders
    2 music LM decodes     bench/music_rtf.py: LM frames/s and RTF of every decode mode, 30 s song with CFG
    2 music codec          the codec's, same song
    3 SDXL eager           bench/image_speed.py: 1024², 30 steps, s/image and peak VRAM
    4 LoRA training        bench/train_steps.py: SDXL-sized UNet, 1024², bf16, rank 16: steps/s and peak VRAM
    5 load                 bench/load_speed.py: load time against a sequential read of the same bytes
    2 music LM compiled    the eager decode on torch.compile'd transformers
    3 SDXL compiled        the UNet torch.compile'd

`--cpu-smoke` runs the same steps at tiny size on the CPU (the LM's compilation aside, minutes of C++ there; the
UNet's is traced with the eager backend). A step that fails, overruns its cap or finds no time left is a row with
that status (with what it printed before), the others still run, and the exit code is 1 when any step is not ok.
The table is printed, and written as JSON ($OUT/gpu_report.json when $OUT is set, else bench/gpu/last_report.json)
after every step, so a run cut short still leaves what it measured. Each step's output is kept in
`<report dir>/logs/`.
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
GPU_BUDGET_S = 440.0  # 8 minutes with the wheels' install and the interpreter's start
SMOKE_BUDGET_S = 1800.0
SMOKE_CAP_S = 300.0  # the smoke tests the run, not the speed: a loaded CI machine must not time it out
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
    extra: bool = False  # beyond issue #17's figures: run only when `--only` names it, or with `--extras`


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


def pytest_counts(stdout: str, want_gpu: bool) -> Figures:
    """`passed`/`failed`/`skipped`... from pytest's summary line, and the failed tests' names. On the GPU a
    skipped test is a failure: it means torch saw no CUDA device."""
    summary = [line for line in stdout.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if not summary:
        raise ValueError("no pytest summary line")
    counts: Figures = {word: int(n) for n, word in re.findall(r"(\d+) ([a-z]+)", summary[-1])}
    failed = [line.split(" ", 2)[1] for line in stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if failed:
        counts["failing"] = failed
    if want_gpu and counts.get("skipped"):
        raise ValueError(f"{counts['skipped']} CUDA tests skipped: torch sees no CUDA device")
    return counts


# bench/music_rtf.py: `<part> : <frames> frames (<label>) in <s> s = <fps> frames/s, RTF <rtf>[, ... same tokens
# as eager: yes]`, one line per LM decode mode and one for the codec
_RTF_LINE = re.compile(
    r"^(LM|codec)\s*: (\d+) frames(?: \(([^)]*)\))? in ([\d.]+) s = ([\d.]+) frames/s, RTF ([\d.]+)(.*)$",
    re.MULTILINE,
)


def music_figures(stdout: str) -> Figures:
    """frames/s and RTF of each LM decode mode (by its label) and of the codec."""
    found = _RTF_LINE.findall(stdout)
    if not found:
        raise ValueError("no LM or codec line in the output")
    figures: Figures = {}
    for part, frames, label, seconds, fps, rtf, rest in found:
        key = "codec" if part == "codec" else "lm_" + re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        figures.update({f"{key}_frames": int(frames), f"{key}_s": float(seconds), f"{key}_fps": float(fps)})
        figures[f"{key}_rtf"] = float(rtf)
        if "same tokens as eager:" in rest:
            figures[f"{key}_same_tokens"] = rest.rstrip().endswith("yes")
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


_ACE_LINE = re.compile(r"^ACE-Step .*: .* in ([\d.]+) s, RTF ([\d.]+)(?:, peak ([\d.]+) GiB)?", re.MULTILINE)


def ace_step_figures(stdout: str) -> Figures:
    """bench/ace_step_rtf.py's line: seconds, RTF and peak VRAM of one song."""
    found = _ACE_LINE.search(stdout)
    if not found:
        raise ValueError("no ACE-Step line in the output")
    seconds, rtf, peak = found.groups()
    figures: Figures = {"ace_step_s": float(seconds), "ace_step_rtf": float(rtf)}
    if peak:
        figures["ace_step_peak_vram_gib"] = float(peak)
    return figures


def family_figures(path: Path) -> Figures:
    """bench/image_families.py's JSON rows, one figure per family and measure (the GPU rows where there are)."""
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    gpu = [row for row in rows if str(row.get("device", "")).startswith("cuda")]
    labels = {"family", "models", "device", "size"}
    return {
        f"{row['family']}_{key}": value
        for row in gpu or rows
        for key, value in row.items()
        if key not in labels
    }


def plan(smoke: bool, work: Path, python: str) -> list[Step]:
    """The steps in running order; on the GPU each has its cap, in the smoke every cap is SMOKE_CAP_S."""
    bench = ROOT / "bench"
    models = work / "models"
    device = "cpu" if smoke else "cuda"

    def cap(gpu_s: float) -> float:
        return SMOKE_CAP_S if smoke else gpu_s

    song = (
        ["--size", "tiny", "--seconds", "1", "--codec-steps", "1"]
        if smoke
        else ["--size", "3b", "--seconds", "30"]
    )
    music = [python, str(bench / "music_rtf.py"), "--device", device, "--cfg", "1.5", *song]
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
        ["--steps", "1", "--warmup", "0", "--tiny-resolution", "64", "--skip-gpu", "--tiny", "default"]
        if smoke
        else ["--steps", "4", "--warmup", "1", "--tiny", "none"]
    )
    # every test file with a CUDA case (the whole folder would import test-only packages the GPU machine lacks)
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    pytest = [python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", "cuda", *tests]
    build = [python, str(bench / "gpu" / "real_size.py"), "--root", str(models), "--device", device]
    load = [python, str(bench / "load_speed.py"), "--device", device]
    load += ["--model", f"sdxl-base={models / 'sdxl-base'}", "--model", f"heartmula={models / 'heartmula'}"]
    steps = [
        Step("0 models", [*build, "--size", "tiny" if smoke else "real"], cap(180), last_json),
        Step(
            "1 cuda tests",
            pytest,
            cap(150),
            lambda out: pytest_counts(out, not smoke),
            {"GPU_BENCH_MODELS": str(models)},
        ),
        # every decode mode in one process, side by side: one model build, and each mode's tokens checked
        # against the eager loop's
        Step("2 music LM decodes", [*music, "--part", "lm"], cap(200), music_figures),
        Step("2 music codec", [*music, "--part", "codec"], cap(60), music_figures),
        Step("3 SDXL eager", image, cap(90), last_json),
        Step("4 LoRA training", train, cap(120), lambda out: training_figures(out, not smoke)),
        Step("5 load", load, cap(100), last_json),
        Step("2 music LM compiled", [*music, "--part", "lm", "--compile"], cap(150), music_figures),
        Step("3 SDXL compiled", [*image, *compiled], cap(180), last_json),
    ]
    # the other engines' real sizes, past the 8-minute budget: a second call runs them (`--only 6 --only 7`)
    ace = [python, str(bench / "ace_step_rtf.py"), "--device", device]
    ace += (
        ["--size", "tiny", "--seconds", "1", "--steps", "1"] if smoke else ["--size", "3b", "--seconds", "30"]
    )
    families_json = work / "image_families.json"
    families_json.unlink(missing_ok=True)  # the work folder is kept between calls: no figures from a past run
    families = [python, str(bench / "image_families.py"), "--work", str(work), "--json", str(families_json)]
    families += ["--size", "64", "--skip-gpu"] if smoke else []
    steps += [
        Step("6 ACE-Step", ace, cap(200), ace_step_figures, extra=True),
        Step("7 image families", families, cap(450), lambda _: family_figures(families_json), extra=True),
    ]
    if smoke:
        # inductor compiles the LM's C++ kernels on a CPU for minutes; the GPU run measures it
        steps = [step for step in steps if step.name != "2 music LM compiled"]
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
    try:
        figures = step.parse(stdout)
    except Exception as problem:  # noqa: BLE001 - any output the parser cannot read is the step's failure
        figures, parse_error = {}, f"{type(problem).__name__}: {problem}"
    else:
        parse_error = ""
    if code is None:  # what it printed before the kill is kept
        return Row(step.name, "timeout", seconds, figures, f"over its cap of {cap:.0f} s; log tail: {tail}")
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
        "--budget-s",
        type=float,
        help=f"all steps together (default {GPU_BUDGET_S:g} s on the GPU, {SMOKE_BUDGET_S:g} s in the smoke)",
    )
    parser.add_argument(
        "--work", type=Path, help="where the models are built and kept for a rerun (default: under $TMPDIR)"
    )
    parser.add_argument("--only", action="append", help="run only the steps whose name contains this")
    parser.add_argument("--extras", action="store_true", help="also the steps past issue #17's (6, 7)")
    args = parser.parse_args()
    out = os.environ.get("OUT")
    report = Path(out) / "gpu_report.json" if out else ROOT / "bench" / "gpu" / "last_report.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    # a fixed place, so a second call on the still-warm machine (`--only compiled`) finds the models built
    work = args.work or Path(tempfile.gettempdir()) / "gpu-bench" / ("tiny" if args.cpu_smoke else "real")
    work.mkdir(parents=True, exist_ok=True)
    steps = plan(args.cpu_smoke, work, sys.executable)
    if args.only:
        steps = [step for step in steps if any(part in step.name for part in args.only)]
    elif not args.extras:
        steps = [step for step in steps if not step.extra]
    budget_s = args.budget_s or (SMOKE_BUDGET_S if args.cpu_smoke else GPU_BUDGET_S)
    meta = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "device": device_name(), "budget_s": budget_s}
    rows = run_all(steps, budget_s, report, meta)
    print(f"{meta['mode']} on {meta['device']}")
    print(table(rows))
    print(f"report: {report}")
    return 0 if all(row.status == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
