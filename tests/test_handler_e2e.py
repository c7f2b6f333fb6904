"""handler.py as users run it: `--test_input` and the default test_input.json as subprocesses, and the local
API server (`--rp_serve_api`) started as a real process and called over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HANDLER = str(ROOT / "handler.py")
IMAGE_JOB = {"type": "image", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 11}


def worker_env(volume: Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VOLUME_ROOT", "JOB_DATA_DIR", "WORKER_JOBS")}
    env.update({"MODEL_PROFILE": "tiny", "PYTHONUNBUFFERED": "1", **extra})
    if volume is not None:
        env["VOLUME_ROOT"] = str(volume)
    return env


def run_handler(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, HANDLER, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_test_input_flag_writes_images(session_volume: Path, tmp_path: Path) -> None:
    job = {"input": {**IMAGE_JOB, "num_images": 2}}
    done = run_handler("--test_input", json.dumps(job), cwd=tmp_path, env=worker_env(session_volume, WORKER_JOBS="image"))
    assert done.returncode == 0, done.stdout + done.stderr
    folder = session_volume / "job_data" / "local_test"
    result = json.loads((folder / "result.json").read_text())
    assert [Path(o["path"]).parent for o in result["outputs"]] == [folder, folder]
    for output in result["outputs"]:
        with Image.open(output["path"]) as image:
            assert image.size == (64, 64)


def test_bad_test_input_exits_nonzero_with_the_error(session_volume: Path, tmp_path: Path) -> None:
    job = {"input": {**IMAGE_JOB, "width": 30}}
    done = run_handler("--test_input", json.dumps(job), cwd=tmp_path, env=worker_env(session_volume, WORKER_JOBS="image"))
    assert done.returncode != 0
    assert "width: " in done.stdout + done.stderr


def test_default_test_input_json_without_a_volume(tmp_path: Path) -> None:
    """`python handler.py` in a fresh folder: reads test_input.json, outputs land in ./job_data/local_test."""
    shutil.copy(ROOT / "test_input.json", tmp_path / "test_input.json")
    done = run_handler(cwd=tmp_path, env=worker_env(None, WORKER_JOBS="image"))
    assert done.returncode == 0, done.stdout + done.stderr
    expected = json.loads((ROOT / "test_input.json").read_text())["input"]
    images = sorted((tmp_path / "job_data" / "local_test").glob("image_*"))
    assert images
    with Image.open(images[0]) as image:
        assert image.size == (expected["width"], expected["height"])
    assert (tmp_path / ".volume" / "models").is_dir()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_server(session_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = (tmp_path_factory.mktemp("api") / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, HANDLER, "--rp_serve_api", "--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"],
        cwd=ROOT, env=worker_env(session_volume, WORKER_JOBS="image"), stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, Path(log.name).read_text()
            try:
                requests.get(f"{base}/openapi.json", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "API server did not come up"
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_api_runsync(api_server: str, session_volume: Path) -> None:
    answer = requests.post(f"{api_server}/runsync", json={"input": IMAGE_JOB}, timeout=120).json()
    assert answer["status"] == "COMPLETED", answer
    output = answer["output"]
    assert output["seed"] == 11 and output["job_id"] == answer["id"]
    path = Path(output["outputs"][0]["path"])
    assert path.parent == session_volume / "job_data" / answer["id"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_api_run_then_status(api_server: str) -> None:
    submitted = requests.post(f"{api_server}/run", json={"input": {**IMAGE_JOB, "format": "jpeg"}}, timeout=30).json()
    assert submitted["status"] == "IN_PROGRESS"
    answer = requests.post(f"{api_server}/status/{submitted['id']}", timeout=120).json()
    assert answer["status"] == "COMPLETED", answer
    with Image.open(answer["output"]["outputs"][0]["path"]) as image:
        assert image.format == "JPEG"


def test_api_bad_input_fails_with_the_field(api_server: str) -> None:
    answer = requests.post(f"{api_server}/runsync", json={"input": {"type": "image", "prompt": "x", "steps": 0}},
                           timeout=60).json()
    assert answer["status"] == "FAILED"
    assert answer["error"].startswith("steps: ")
    again = requests.post(f"{api_server}/runsync", json={"input": IMAGE_JOB}, timeout=120).json()
    assert again["status"] == "COMPLETED"
