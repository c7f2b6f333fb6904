"""The GPU run's entry (bench/gpu/run.sh), tested where there is no GPU: its step runner, and the whole run at tiny
size on the CPU (`--cpu-smoke`), which goes through every step the GPU run takes."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import gpu_report

ROOT = Path(__file__).resolve().parents[1]


def python_step(name: str, code: str, cap_s: float = 30.0) -> gpu_report.Step:
    return gpu_report.Step(name, [sys.executable, "-c", code], cap_s, gpu_report.last_json)


def test_a_failing_or_overrunning_step_is_a_row_and_the_others_still_run(tmp_path: Path) -> None:
    steps = [
        python_step("fails", "import sys; print('{\"a\": 1}'); sys.exit(3)"),
        python_step("no figures", "print('done')"),
        python_step("overruns", "import subprocess; subprocess.run(['sleep', '60'])", cap_s=4.0),
        # now less than MIN_STEP_S is left: a step with a shorter cap still runs, a longer one is skipped
        python_step("ok", "print('{\"steps_per_s\": 2.5}')", cap_s=2.0),
        python_step("late", "print('{}')"),
    ]
    report = tmp_path / "report.json"
    budget_s = gpu_report.MIN_STEP_S + 3
    rows = gpu_report.run_all(steps, budget_s=budget_s, report=report, meta={"mode": "test"})
    assert [(row.step, row.status) for row in rows] == [
        ("fails", "failed"),
        ("no figures", "failed"),
        ("overruns", "timeout"),
        ("ok", "ok"),
        ("late", "skipped"),
    ]
    assert rows[0].figures == {"a": 1} and rows[0].error.startswith("exit 3")
    assert "no JSON line" in rows[1].error
    assert rows[2].seconds < 8  # the whole process group went, the child `sleep` with it
    saved = json.loads(report.read_text())
    assert saved["ok"] is False and saved["steps"][3]["figures"] == {"steps_per_s": 2.5}
    table = gpu_report.table(rows)
    assert "steps_per_s=2.5" in table and "no time left" in table


def test_music_lines_become_figures_per_decode_mode() -> None:
    stdout = (
        "size=3b device=cuda\n"
        "LM    : 375 frames (eager) in 30.10 s = 12.5 frames/s, RTF 1.003\n"
        "LM    : 375 frames (graph) in 3.00 s = 125.0 frames/s, RTF 0.100, 10.03x eager, same tokens as eager: yes\n"
        "codec : 375 frames (2 windows of 29.76 s, 2 per waveform batch) in 1.50 s = 250.0 frames/s, RTF 0.050\n"
    )
    figures = gpu_report.music_figures(stdout)
    assert figures["lm_eager_rtf"] == 1.003 and "lm_eager_same_tokens" not in figures
    assert figures["lm_graph_fps"] == 125.0 and figures["lm_graph_same_tokens"] is True
    assert figures["codec_rtf"] == 0.05 and figures["codec_frames"] == 375
    compiled = "LM    : 12 frames (eager, compiled) in 1.00 s = 12.0 frames/s, RTF 1.000"
    assert gpu_report.music_figures(compiled)["lm_eager_compiled_rtf"] == 1.0


def test_ace_step_line_becomes_figures() -> None:
    line = "ACE-Step (3b, 48000 Hz, 8 steps, batch 1): 1 x 30 s in 3.00 s, RTF 0.1000, peak 21.5 GiB"
    assert gpu_report.ace_step_figures(line) == {
        "ace_step_s": 3.0,
        "ace_step_rtf": 0.1,
        "ace_step_peak_vram_gib": 21.5,
    }


# What the GPU machine has (and what its packages bring), and what the GPU run never imports.
GPU_MACHINE = {
    "torch",
    "numpy",
    "safetensors",
    "transformers",
    "accelerate",
    "peft",
    "huggingface-hub",
    "pillow",
}
GPU_MACHINE |= {"tokenizers", "httpx2"}  # transformers' tokenizers; huggingface_hub's HTTP client
NOT_IN_THE_GPU_RUN = {
    "boto3": "bucket uploads, only with a bucket configured",
    "botocore": "the same",
    "celery": "the caller's side (worker_client)",
    "fastapi": "the pod's web UI",
    "starlette": "the file gateway, on a CPU pod",
    "uvicorn": "the same",
    "bitsandbytes": "the adamw8bit optimizer, which the GPU run does not train with",
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_carried_wheels_cover_what_the_gpu_run_imports() -> None:
    """Every third-party import of the worker, the cache, handler.py and the benches is on the GPU machine or in
    bench/gpu/fetch_wheels.sh: a new dependency must be carried, or the GPU run fails on an import."""
    script = (ROOT / "bench" / "gpu" / "fetch_wheels.sh").read_text()
    listed = script[script.index("packages=(") : script.index("\n)\n")]
    carried = {normalized(word) for line in listed.splitlines()[1:] for word in line.split("#")[0].split()}
    files = [ROOT / "handler.py"]
    for folder in ("worker", "cache", "bench"):
        files += sorted((ROOT / folder).rglob("*.py"))
    modules: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= {*sys.stdlib_module_names, "worker", "cache", "worker_client", "bench"}
    modules -= {path.stem for path in (ROOT / "tests").glob("*.py")}  # bench/cache_warm.py's test servers
    owners = importlib.metadata.packages_distributions()
    missing = sorted(
        module
        for module in modules
        if module not in NOT_IN_THE_GPU_RUN
        and not {normalized(d) for d in owners.get(module, [module])} & (carried | GPU_MACHINE)
    )
    assert not missing, f"imported by the GPU run, neither on the GPU machine nor carried: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2 min on an idle 2-core machine; 8 under a loaded one
def test_cpu_smoke_runs_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--cpu-smoke", "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=1700,
        check=False,
    )
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    statuses = {row["step"]: row["status"] for row in report["steps"]}
    assert done.returncode == 0, (statuses, done.stdout[-3000:])
    assert report["mode"] == "cpu-smoke" and report["ok"] is True
    for prefix in (
        "0 models",
        "1 cuda tests",
        "2 music LM",
        "2 music codec",
        "3 SDXL eager",
        "4 LoRA",
        "5 load",
    ):
        assert any(step.startswith(prefix) for step in statuses), prefix
    assert any(step == "3 SDXL compiled" for step in statuses)
    rows = {row["step"]: row for row in report["steps"]}
    assert rows["1 cuda tests"]["figures"]["skipped"] >= 5  # the CUDA tests are collected and skip here
    assert rows["5 load"]["figures"]["heartmula_load_s"] > 0
    assert all(step in done.stdout for step in statuses)  # the table is printed
