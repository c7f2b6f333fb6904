"""`python handler.py` in pod mode as the Docker image runs it (MODE=pod), a real process on loopback, driven by
the project's own EndpointClient as Morpheus drives the hosted API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.pod_harness import free_port
from worker.pod.api import bind_host
from worker_client.endpoint_client import EndpointClient
from worker_client.exceptions import JobCancelledError, JobFailedError

pytestmark = pytest.mark.slow  # a real process: imports, warm-up and the server start take ~10 s
ROOT = Path(__file__).resolve().parents[1]
IMAGE = {"type": "image", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def pod_process(session_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("pod-cli")
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("POD_", "WORKER_", "JOB_DATA"))
    }
    env.update(MODE="pod", MODEL_PROFILE="tiny", WORKER_JOBS="image", VOLUME_ROOT=str(session_volume),
               JOB_DATA_DIR=str(folder / "job_data"), PYTHONUNBUFFERED="1")  # fmt: skip
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "handler.py"), "--host", "0.0.0.0", "--port", str(port)],
            cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                requests.get(f"{base}/health", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.3)
        yield base, log_path
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_without_a_key_the_pod_listens_on_loopback_only(pod_process: tuple[str, Path]) -> None:
    _, log_path = pod_process
    assert "POD_API_KEY is not set: listening on 127.0.0.1 only" in log_path.read_text()
    assert bind_host("0.0.0.0", None) == "127.0.0.1" and bind_host("0.0.0.0", "key") == "0.0.0.0"


def test_endpoint_client_drives_the_pod(pod_process: tuple[str, Path]) -> None:
    base, _ = pod_process
    client = EndpointClient("my-pod", "any-key", api_url=f"{base}/v2", poll_initial_s=0.1)
    output = client.run_sync(IMAGE, wait_s=60)
    assert output["seed"] == 7 and Path(output["outputs"][0]["path"]).is_file()
    assert client.wait(client.run({**IMAGE, "seed": 8}), timeout_s=60)["seed"] == 8
    with pytest.raises(JobFailedError) as failed:
        client.run_sync({**IMAGE, "width": 30}, wait_s=60)
    assert failed.value.fields == ["width"]
    long_job = client.run({**IMAGE, "width": 256, "height": 256, "steps": 120})
    assert client.cancel(long_job).status == "CANCELLED"
    with pytest.raises(JobCancelledError):
        client.wait(long_job, timeout_s=30)
    assert client.health()["jobs"]["completed"] >= 2
