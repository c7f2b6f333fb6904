"""The client against a loopback server that answers like RunPod's hosted API (states, errors, 429, limits)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fake_runpod_api import FakeRunpodApi
from worker_client import (
    EndpointClient,
    JobCancelledError,
    JobFailedError,
    JobTimedOutError,
    PayloadTooLargeError,
    RequestError,
    TransientError,
    WaitTimeoutError,
)


@pytest.fixture
def api() -> Iterator[FakeRunpodApi]:
    server = FakeRunpodApi().start()
    try:
        yield server
    finally:
        server.stop()


def client_for(api: FakeRunpodApi, **options: object) -> EndpointClient:
    defaults = {"poll_initial_s": 0.02, "poll_max_s": 0.05, "max_retries": 3, "retry_initial_s": 0.01}
    return EndpointClient(api.endpoint_id, api.api_key, api_url=api.api_url, **{**defaults, **options})


def test_run_then_wait_follows_the_states_to_the_output(api: FakeRunpodApi) -> None:
    client = client_for(api)
    job_id = client.run({"input": {"prompt": "x", "output": {"image_pod_path": "/runpod-volume/a.png"}}})

    assert client.status(job_id).status == "IN_QUEUE"
    assert client.status(job_id).status == "IN_PROGRESS"
    assert client.wait(job_id, timeout_s=5) == {"image_pod_path": "/runpod-volume/a.png"}
    assert api.paths("GET") == [f"/v2/{api.endpoint_id}/status/{job_id}"] * 3
    assert {r.headers["Authorization"] for r in api.requests} == {f"Bearer {api.api_key}"}


def test_a_bare_input_is_wrapped(api: FakeRunpodApi) -> None:
    job_id = client_for(api).run({"prompt": "x"})
    assert api.jobs[job_id].input == {"prompt": "x"}


@pytest.mark.parametrize(
    ("scenario", "error_type"),
    [("fail", JobFailedError), ("cancelled", JobCancelledError), ("timed_out", JobTimedOutError)],
)
def test_final_states_raise_typed_errors_with_the_worker_text(
    api: FakeRunpodApi, scenario: str, error_type: type
) -> None:
    client = client_for(api)
    job_id = client.run({"scenario": scenario, "error": "width: must be a multiple of 8; steps: too many"})
    with pytest.raises(error_type) as caught:
        client.wait(job_id, timeout_s=5)
    assert caught.value.job_id == job_id
    assert caught.value.error == "width: must be a multiple of 8; steps: too many"
    assert caught.value.fields == ["width", "steps"]


def test_429_is_retried_after_retry_after(api: FakeRunpodApi) -> None:
    client = client_for(api)
    api.throttle(1)
    started = time.monotonic()
    job_id = client.run({"prompt": "x"})
    assert time.monotonic() - started >= 0.9  # the fake says Retry-After: 1
    assert api.paths("POST") == [f"/v2/{api.endpoint_id}/run"] * 2
    assert job_id in api.jobs


def test_429_beyond_the_retries_is_transient(api: FakeRunpodApi) -> None:
    api.throttle(10)
    with pytest.raises(TransientError, match="HTTP 429"):
        client_for(api, max_retries=0).run({"prompt": "x"})


def test_5xx_is_retried_for_status_but_not_for_run(api: FakeRunpodApi) -> None:
    client = client_for(api)
    job_id = client.run({"prompt": "x"})
    api.fail_next(2)
    assert client.status(job_id).status == "IN_QUEUE"

    api.fail_next(1)
    with pytest.raises(TransientError, match="HTTP 503"):
        client.run({"prompt": "x"})  # a /run that may have been queued is not sent twice
    assert len(api.jobs) == 1


def test_run_sync_returns_the_output_and_sends_the_wait(api: FakeRunpodApi) -> None:
    client = client_for(api)
    assert client.run_sync({"output": {"ok": 1}}, wait_s=12) == {"ok": 1}
    assert api.requests[-1].query == {"wait": ["12000"]}


def test_run_sync_polls_when_the_job_outlives_the_request(api: FakeRunpodApi) -> None:
    assert client_for(api).run_sync({"slow": True, "output": {"ok": 2}}, wait_s=5) == {"ok": 2}
    assert len(api.paths("GET")) == 3


def test_run_sync_failure_is_typed(api: FakeRunpodApi) -> None:
    with pytest.raises(JobFailedError, match="prompt: required"):
        client_for(api).run_sync({"scenario": "fail", "slow": True, "error": "prompt: required"}, wait_s=5)


def test_cancel_then_wait_raises_cancelled(api: FakeRunpodApi) -> None:
    client = client_for(api)
    job_id = client.run({"scenario": "hang"})
    assert client.cancel(job_id).status == "CANCELLED"
    with pytest.raises(JobCancelledError):
        client.wait(job_id, timeout_s=5)
    assert f"/v2/{api.endpoint_id}/cancel/{job_id}" in api.paths("POST")


def test_wait_gives_up_after_its_timeout_with_the_job_id(api: FakeRunpodApi) -> None:
    client = client_for(api)
    job_id = client.run({"scenario": "hang"})
    with pytest.raises(WaitTimeoutError) as caught:
        client.wait(job_id, timeout_s=0.2)
    assert caught.value.job_id == job_id


def test_payload_limits_are_checked_before_sending(api: FakeRunpodApi) -> None:
    client = client_for(api)
    with pytest.raises(PayloadTooLargeError, match="10 MB"):
        client.run({"prompt": "x" * (10 * 1024 * 1024)})
    with pytest.raises(PayloadTooLargeError, match="20 MB"):
        client.run_sync({"prompt": "x" * (20 * 1024 * 1024)})
    assert api.requests == []


def test_a_wrong_key_is_a_request_error_that_names_the_key(api: FakeRunpodApi) -> None:
    client = EndpointClient(api.endpoint_id, "wrong", api_url=api.api_url)
    with pytest.raises(RequestError, match="RUNPOD_API_KEY") as caught:
        client.run({"prompt": "x"})
    assert caught.value.status_code == 401


def test_unknown_job_is_a_request_error(api: FakeRunpodApi) -> None:
    with pytest.raises(RequestError, match="404"):
        client_for(api).status("nope")


def test_health(api: FakeRunpodApi) -> None:
    assert client_for(api).health()["workers"] == {"idle": 1, "running": 0}


def test_hosted_urls_and_key_are_required() -> None:
    assert EndpointClient(endpoint_id="abc", api_key="k").base_url == "https://api.runpod.ai/v2/abc"
    with pytest.raises(Exception, match="api_key"):
        EndpointClient(endpoint_id="abc")
    with pytest.raises(Exception, match="exactly one"):
        EndpointClient(endpoint_id="abc", base_url="http://127.0.0.1:1", api_key="k")


def test_client_modules_import_without_torch_celery_or_boto3() -> None:
    code = (
        "import sys, worker_client, worker_client.outputs, worker_client.endpoints; "
        "heavy = [m for m in ('torch', 'celery', 'boto3', 'diffusers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
