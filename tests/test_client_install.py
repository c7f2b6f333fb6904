"""`pip install .` is the client alone: a fresh virtualenv gets requests and none of the GPU stack, and drives a
job through the client against the fake RunPod API."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from tests.fake_runpod_api import FakeRunpodApi

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "peft", "matplotlib", "runpod", "pydantic", "celery", "boto3")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    # a copy of the checkout, so the build writes nothing into the working tree
    source = tmp_path_factory.mktemp("source")
    subprocess.run(
        f"git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t {source}",
        shell=True,
        check=True,
        cwd=ROOT,
    )
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", str(source)], check=True, timeout=600)
    return python


def test_the_bare_install_has_no_gpu_stack(client_venv: Path) -> None:
    listed = subprocess.run(
        [str(client_venv), "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "requests" in installed
    assert not installed & set(HEAVY), installed & set(HEAVY)


def test_the_bare_install_drives_a_job_and_fetches_its_file(client_venv: Path, tmp_path: Path) -> None:
    job_data = tmp_path / "job_data"
    (job_data / "job-1").mkdir(parents=True)
    payload = b"an output file"
    (job_data / "job-1" / "image_00.png").write_bytes(payload)
    output = {
        "job_id": "job-1",
        "type": "image",
        "outputs": [
            {
                "path": "/runpod-volume/job_data/job-1/image_00.png",
                "relpath": "job-1/image_00.png",
                "kind": "image",
                "bytes": len(payload),
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        ],
    }
    api = FakeRunpodApi().start()
    script = textwrap.dedent(
        f"""
        import sys
        from worker_client import EndpointClient, JobFailedError, MountedVolume
        client = EndpointClient(
            endpoint_id={api.endpoint_id!r}, api_key={api.api_key!r}, api_url={api.api_url!r},
            outputs=MountedVolume({str(job_data)!r}), poll_initial_s=0.01,
        )
        result = client.wait(client.run({{"type": "image", "prompt": "x", "output": {output!r}}}), timeout_s=30)
        [path] = client.fetch(result, {str(tmp_path / "fetched")!r})
        print(path.read_bytes().decode())
        try:
            client.wait(client.run({{"scenario": "fail", "error": "width: must be a multiple of 8"}}), timeout_s=30)
        except JobFailedError as error:
            print(error.fields)
        heavy = [name for name in {HEAVY!r} if name in sys.modules]
        print(heavy)
        """
    )
    try:
        ran = subprocess.run(
            [str(client_venv), "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
    finally:
        api.stop()
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["an output file", "['width']", "[]"]
    probe = "import importlib.util as u; print([n for n in %r if u.find_spec(n)])" % (HEAVY,)
    found = subprocess.run([str(client_venv), "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
