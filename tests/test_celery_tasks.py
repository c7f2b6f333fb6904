"""The Celery tasks with a real Redis broker and a real Celery worker process, against the fake hosted API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.fake_runpod_api import FakeRunpodApi
from tests.servers import celery_worker, redis_server
from worker_client import JobFailedError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api() -> Iterator[FakeRunpodApi]:
    server = FakeRunpodApi().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def producer(api: FakeRunpodApi, broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    env = {
        "CELERY_BROKER_URL": broker,
        "RUNPOD_API_URL": api.api_url,
        "RUNPOD_ENDPOINT_ID": api.endpoint_id,
        "RUNPOD_API_KEY": api.api_key,
        "FETCH_DIR": str(tmp_path_factory.mktemp("fetched")),
        "TASK_RETRY_DELAY_S": "0.1",
    }
    with celery_worker(env):
        yield Celery("test-producer", broker=broker, backend=broker)


def send(producer: Celery, task: str, job_input: dict[str, Any]) -> Any:
    return producer.send_task(f"worker_client.celery_tasks.{task}", args=[job_input])


def completed(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "type": "image",
        "outputs": [],
        "image_pod_path": "/runpod-volume/job_data/x.png",
    }


def test_a_task_submits_waits_and_returns_the_result(producer: Celery, api: FakeRunpodApi) -> None:
    answer = send(producer, "generate_image", {"prompt": "a cat", "output": completed("j1")}).get(timeout=30)
    assert answer["result"]["image_pod_path"] == "/runpod-volume/job_data/x.png"
    assert answer["files"] == []
    assert api.jobs[answer["job_id"]].input["type"] == "image"


def test_a_transient_error_retries_the_task(producer: Celery, api: FakeRunpodApi) -> None:
    runs_before = len(api.paths("POST"))
    api.fail_next(1)
    answer = send(producer, "generate_music", {"lyrics": "la", "output": completed("j2")}).get(timeout=30)
    assert answer["job_id"] in api.jobs
    assert len(api.paths("POST")) - runs_before == 2  # the 503, then the retry


def test_a_failed_job_raises_its_typed_error(producer: Celery) -> None:
    result = send(
        producer, "generate_dataset", {"scenario": "fail", "error": "width: must be a multiple of 8"}
    )
    with pytest.raises(JobFailedError) as caught:
        result.get(timeout=30)
    assert caught.value.fields == ["width"]


def test_revoking_a_running_task_cancels_the_runpod_job(producer: Celery, api: FakeRunpodApi) -> None:
    result = send(producer, "train_lora", {"scenario": "hang"})
    deadline = time.monotonic() + 30
    while not any(job.polls for job in api.jobs.values() if job.scenario == "hang"):
        assert time.monotonic() < deadline, "the task never polled its job"
        time.sleep(0.05)
    [job] = [job for job in api.jobs.values() if job.scenario == "hang"]

    result.revoke(terminate=True)

    while not job.cancelled:
        assert time.monotonic() < deadline, "the RunPod job was not cancelled"
        time.sleep(0.05)
    assert f"/v2/{api.endpoint_id}/cancel/{job.id}" in api.paths("POST")


def test_the_module_imports_and_lists_its_tasks() -> None:
    from worker_client import celery_tasks

    celery_tasks.app.loader.import_default_modules()
    names = {name for name in celery_tasks.app.tasks if name.startswith("worker_client.celery_tasks.")}
    assert names == {
        f"worker_client.celery_tasks.{n}"
        for n in ("generate_image", "generate_dataset", "train_lora", "generate_music")
    }
