"""The client and the Celery tasks against the real local API server (`python handler.py --rp_serve_api`, tiny
models). Its worker uploads outputs to a real S3 server (moto), so `fetch` downloads them from presigned URLs; the
Celery worker process reads them from the same volume, as on a pod."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile
from celery import Celery
from PIL import Image

from tests.servers import celery_worker, local_api_server, moto_s3, redis_server
from worker_client import EndpointClient, JobCancelledError, JobFailedError

pytestmark = pytest.mark.slow

IMAGE = {"type": "image", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 5}
MUSIC = {"type": "music", "lyrics": "[Verse]\nla la la", "tags": "piano", "duration_s": 0.4, "codec_steps": 2}


@pytest.fixture(scope="module")
def api_url(session_volume: Path) -> Iterator[str]:
    import boto3

    with moto_s3() as s3_url:
        boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id="k",
            aws_secret_access_key="s",
            region_name="us-east-1",
        ).create_bucket(Bucket="outputs")
        env = {
            "VOLUME_ROOT": str(session_volume),
            "JOB_DATA_DIR": "",
            "MODEL_PROFILE": "tiny",
            "WORKER_JOBS": "image,music",
            "BUCKET_ENDPOINT_URL": f"{s3_url}/outputs",
            "BUCKET_ACCESS_KEY_ID": "k",
            "BUCKET_SECRET_ACCESS_KEY": "s",
            "PYTHONUNBUFFERED": "1",
        }
        with local_api_server(env) as url:
            yield url


@pytest.fixture(scope="module")
def client(api_url: str) -> EndpointClient:
    return EndpointClient(base_url=api_url, poll_initial_s=0.1, poll_max_s=0.5)


def fetched(client: EndpointClient, result: dict[str, Any], dest: Path) -> list[Path]:
    assert all(output["url"].startswith("http://127.0.0.1:") for output in result["outputs"])
    return client.fetch(result, dest)


def test_image_job_by_run_and_wait_then_fetch(client: EndpointClient, tmp_path: Path) -> None:
    job_id = client.run({"input": IMAGE})
    result = client.wait(job_id, timeout_s=120)
    assert result["job_id"] == job_id and result["type"] == "image"
    [path] = fetched(client, result, tmp_path)
    assert path == tmp_path / job_id / "image_00.png"
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_image_job_by_run_sync(client: EndpointClient) -> None:
    result = client.run_sync(IMAGE, wait_s=120)
    assert [o["kind"] for o in result["outputs"]] == ["image"]
    assert result["seed"] == 5


def test_music_job_by_run_wait_and_run_sync(client: EndpointClient, tmp_path: Path) -> None:
    waited = client.wait(client.run(MUSIC), timeout_s=120)
    synced = client.run_sync({"input": {**MUSIC, "seed": 3}}, wait_s=120)
    for result in (waited, synced):
        assert result["type"] == "music"
        [path] = fetched(client, result, tmp_path)
        assert soundfile.info(path).samplerate == result["sample_rate"]


def test_a_bad_input_is_a_typed_error_naming_the_field(client: EndpointClient) -> None:
    with pytest.raises(JobFailedError) as by_wait:
        client.wait(client.run({**IMAGE, "width": 30}), timeout_s=60)
    assert by_wait.value.fields == ["width"]
    with pytest.raises(JobFailedError) as by_sync:
        client.run_sync({**MUSIC, "tags": ""}, wait_s=60)
    assert by_sync.value.fields == ["tags"]


def test_a_morpheus_request_answers_image_pod_path(client: EndpointClient, session_volume: Path) -> None:
    params = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}
    result = client.run_sync({"workflow_name": "creation", "params": params}, wait_s=120)
    assert Path(result["image_pod_path"]).parent == session_volume / "job_data" / result["job_id"]


def test_cancel_stops_tracking_a_local_job(client: EndpointClient) -> None:
    job_id = client.run(IMAGE)
    client.cancel(job_id)
    with pytest.raises(JobCancelledError):
        client.wait(job_id, timeout_s=60)
    assert client.health() == {"local_server": True}


def test_a_celery_task_runs_an_image_job_end_to_end(
    api_url: str, session_volume: Path, tmp_path: Path
) -> None:
    with redis_server() as broker:
        env = {
            "CELERY_BROKER_URL": broker,
            "RUNPOD_ENDPOINT_URL": api_url,
            "OUTPUTS_FROM": "mount",
            "JOB_DATA_MOUNT": str(session_volume / "job_data"),
            "FETCH_DIR": str(tmp_path / "fetched"),
        }
        with celery_worker(env):
            producer = Celery("test-producer", broker=broker, backend=broker)
            answer = producer.send_task("worker_client.celery_tasks.generate_image", args=[IMAGE]).get(timeout=120)
    [path] = answer["files"]
    assert Path(path) == tmp_path / "fetched" / answer["job_id"] / "image_00.png"
    with Image.open(path) as image:
        assert image.size == (64, 64)
    # the worker uploaded it too; the task read it from the mounted volume
    assert answer["result"]["outputs"][0]["url"].startswith("http://127.0.0.1:")
