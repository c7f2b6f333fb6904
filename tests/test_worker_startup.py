"""Start-up: warm every served job's models before taking jobs (or lazily), and the volume fitness check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cache.volume import Volume, resolve_volume
from worker.config import Settings
from worker.worker import Worker

JOB = {"type": "image", "prompt": "a fox", "width": 64, "height": 64, "steps": 1, "seed": 1}


def test_warm_start_publishes_and_loads_before_the_first_job(session_volume: Path) -> None:
    worker = Worker(Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",))).start()
    assert worker.loaded_jobs == ("image",)
    manifest = json.loads((session_volume / "models" / "sdxl-tiny" / ".complete.json").read_text())
    assert manifest["name"] == "sdxl-tiny"
    result = worker.handle_sync({"id": "warm-first", "input": JOB})
    assert result["metrics"]["load_s"] < 0.05


def test_lazy_start_loads_on_the_first_job(session_volume: Path) -> None:
    settings = Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",), warm_on_start=False)
    worker = Worker(settings).start()
    assert worker.loaded_jobs == ()
    first = worker.handle_sync({"id": "lazy-first", "input": JOB})
    second = worker.handle_sync({"id": "lazy-second", "input": JOB})
    assert worker.loaded_jobs == ("image",)
    assert first["metrics"]["load_s"] > second["metrics"]["load_s"]
    assert first["outputs"][0]["sha256"] == second["outputs"][0]["sha256"]


def test_fitness_check_fails_on_a_missing_volume_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    worker = Worker(Settings(volume_root=missing, model_profile="tiny", worker_jobs=("image",)))
    with pytest.raises(OSError, match="does not exist"):
        worker.fitness_check()
    assert not missing.exists()


def test_fitness_check_fails_when_the_mount_is_not_a_folder(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "volume"
    not_a_folder.write_text("a file where the mount should be")
    with pytest.raises(OSError):
        Volume(not_a_folder, "test").check_writable()
    Volume(tmp_path, "test").check_writable()
    assert list(tmp_path.iterdir()) == [not_a_folder]  # the probe file is gone


def test_fitness_check_passes_on_a_writable_volume(session_volume: Path) -> None:
    Worker(Settings(volume_root=session_volume, model_profile="tiny", worker_jobs=("image",))).fitness_check()


def test_volume_resolution_order_and_caches_on_the_volume(tmp_path: Path) -> None:
    configured = resolve_volume(tmp_path)
    assert (configured.root, configured.reason) == (tmp_path.resolve(), "VOLUME_ROOT is set")
    script = (
        "import os; from pathlib import Path; from cache.volume import resolve_volume; "
        "v = resolve_volume(); v.configure_environment(); "
        "print(v.root, v.job_data_dir(), os.environ['HF_HOME'], os.environ['TMPDIR'], sep='\\n')"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    if Path("/runpod-volume").is_dir() or Path("/workspace").is_dir():
        pytest.skip("this machine has a RunPod mount point")
    assert out[:4] == [str(tmp_path / ".volume"), str(tmp_path / "job_data"),
                       str(tmp_path / ".volume" / ".cache" / "huggingface"), str(tmp_path / ".volume" / "tmp")]
