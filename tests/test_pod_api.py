"""Pod mode through RunPod's own clients: `runpod.Endpoint` and `runpod.AsyncioEndpoint`, pointed at the pod
server with `runpod.endpoint_url_base`, on the tiny image model; plus the routes those clients do not call
(`/stream`, `/retry`, `POST /status`), the queue's order, cancel, expiry, restarts, webhooks and the token."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp
import pytest
import requests
import runpod
from pydantic import Field

from tests.pod_harness import POD_KEY, RunningPod, running_pod
from worker.pod.job_queue import PodQueue
from worker.pod.job_records import JobRecord, RecordFiles
from worker.pod.web_ui import form_spec
from worker.schemas import ImageJob, LoraRef, StrictInput

IMAGE = {"type": "image", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 3}
# long enough on the tiny model (~10 s) to be cancelled mid-run; it stops at the next denoising step
LONG_IMAGE = {**IMAGE, "width": 256, "height": 256, "steps": 120}


@pytest.fixture(scope="module")
def pod(session_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPod]:
    with running_pod(session_volume, tmp_path_factory.mktemp("pod-job-data"), ("image",)) as running:
        yield running


@pytest.fixture
def sdk(pod: RunningPod) -> Iterator[None]:
    saved = runpod.api_key, runpod.endpoint_url_base
    runpod.api_key, runpod.endpoint_url_base = POD_KEY, f"{pod.url}/v2"
    yield
    runpod.api_key, runpod.endpoint_url_base = saved


def post(pod: RunningPod, route: str, body: dict[str, Any] | None = None, **params: Any) -> requests.Response:
    return requests.post(
        f"{pod.url}/v2/any-id/{route}", json=body, headers=pod.auth, params=params, timeout=60
    )


def status(pod: RunningPod, job_id: str) -> dict[str, Any]:
    return requests.get(f"{pod.url}/status/{job_id}", headers=pod.auth, timeout=10).json()


def wait_final(pod: RunningPod, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (answer := status(pod, job_id))["status"] in ("IN_QUEUE", "IN_PROGRESS"):
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)
    return answer


def wait_running(pod: RunningPod, job_id: str) -> None:
    """Until the job has reported a step (a running job's status carries its latest progress as `output`)."""
    deadline = time.monotonic() + 60
    while "output" not in (answer := status(pod, job_id)):
        assert time.monotonic() < deadline and answer["status"] in ("IN_QUEUE", "IN_PROGRESS"), answer
        time.sleep(0.02)


def test_sync_sdk_client(pod: RunningPod, sdk: None) -> None:
    endpoint = runpod.Endpoint("my-pod")
    output = endpoint.run_sync(IMAGE, timeout=60)
    image = Path(output["outputs"][0]["path"])
    assert image.parent == pod.job_data / output["job_id"] and image.is_file()

    job = endpoint.run({"input": {**IMAGE, "seed": 4}})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    result = job.output(timeout=60)
    assert result["job_id"] == job.job_id and result["seed"] == 4
    assert result == json.loads((pod.job_data / job.job_id / "result.json").read_text())
    for answer in (status(pod, job.job_id), post(pod, f"status/{job.job_id}").json()):  # GET and POST alike
        assert answer["status"] == "COMPLETED" and answer["output"] == result
        assert answer["delayTime"] >= 0 and answer["executionTime"] > 0
    assert job.cancel() == {"id": job.job_id, "status": "COMPLETED"}  # a finished job stays finished

    failed = endpoint.run_sync({**IMAGE, "steps": 0}, timeout=60)  # the worker's answer: {"error": ...}
    assert set(failed) == {"error"} and failed["error"].startswith("steps: ")
    health = endpoint.health()
    assert health["jobs"]["completed"] >= 2 and health["jobs"]["failed"] >= 1
    assert health["workers"]["idle"] + health["workers"]["running"] == 1
    assert endpoint.purge_queue() == {"removed": 0, "status": "completed"}


def test_asyncio_sdk_client(pod: RunningPod, sdk: None) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            endpoint = runpod.AsyncioEndpoint("my-pod", session)
            job = await endpoint.run({**IMAGE, "seed": 5})
            assert await job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
            output = await job.output(timeout=60)
            assert output["seed"] == 5 and Path(output["outputs"][0]["path"]).is_file()

            running = await endpoint.run(LONG_IMAGE)
            queued = await endpoint.run(IMAGE)
            await asyncio.to_thread(wait_running, pod, running.job_id)
            health = await endpoint.health()
            assert health["jobs"]["inProgress"] == 1 and health["jobs"]["inQueue"] == 1
            assert await endpoint.purge_queue() == {"removed": 1, "status": "completed"}
            assert await running.cancel() == {"id": running.job_id, "status": "CANCELLED"}
            assert await running.status() == "CANCELLED"
            async with session.get(f"{pod.url}/status/{queued.job_id}", headers=pod.auth) as purged:
                assert purged.status == 404

    asyncio.run(scenario())


def test_three_jobs_run_in_order_one_at_a_time(pod: RunningPod) -> None:
    ids = []
    for seed in (1, 2, 3):
        answer = post(pod, "run", {"input": {**IMAGE, "seed": seed}}).json()
        assert answer["status"] == "IN_QUEUE"
        ids.append(answer["id"])
    assert [wait_final(pod, job_id)["status"] for job_id in ids] == ["COMPLETED"] * 3
    records = [pod.queue.get(job_id) for job_id in ids]
    for earlier, later in itertools.pairwise(records):
        assert earlier.submitted_at <= later.submitted_at
        assert earlier.finished_at <= later.started_at  # one at a time, in submission order
    assert status(pod, ids[2])["delayTime"] >= status(pod, ids[0])["executionTime"]


def test_cancel_stops_a_running_job_and_removes_its_folder(pod: RunningPod) -> None:
    running = post(pod, "run", {"input": LONG_IMAGE}).json()["id"]
    following = post(pod, "run", {"input": IMAGE}).json()["id"]
    wait_running(pod, running)
    assert (pod.job_data / running).is_dir()
    stream = requests.get(f"{pod.url}/stream/{running}", headers=pod.auth).json()
    assert stream["status"] == "IN_PROGRESS" and stream["stream"]
    assert all(item["output"]["total"] == 120 for item in stream["stream"])

    assert post(pod, f"cancel/{running}").json() == {"id": running, "status": "CANCELLED"}
    cancelled = status(pod, running)
    assert cancelled["status"] == "CANCELLED" and cancelled["error"].startswith("cancelled: ")
    assert wait_final(pod, following)["status"] == "COMPLETED"  # it ran once the cancelled job had stopped
    assert not (pod.job_data / running).exists()
    assert pod.queue.get(running).finished_at <= pod.queue.get(following).started_at


def test_timed_out_job_and_retry(pod: RunningPod) -> None:
    job_id = post(pod, "run", {"input": LONG_IMAGE, "policy": {"executionTimeout": 200}}).json()["id"]
    answer = wait_final(pod, job_id)
    assert answer["status"] == "TIMED_OUT" and answer["error"].startswith("timed out: ")
    assert not (pod.job_data / job_id).exists()
    retried_before = pod.queue.health()["jobs"]["retried"]
    assert post(pod, f"retry/{job_id}").json() == {"id": job_id, "status": "IN_QUEUE"}
    assert wait_final(pod, job_id)["status"] == "TIMED_OUT"  # the same input and policy again
    assert pod.queue.health()["jobs"]["retried"] == retried_before + 1

    done = post(pod, "runsync", {"input": IMAGE}).json()
    refused = post(pod, f"retry/{done['id']}")
    assert refused.status_code == 400 and refused.json()["error"].startswith("id: ")


def test_runsync_wait_answers_with_the_id_when_the_job_outlives_it(pod: RunningPod) -> None:
    answer = post(pod, "runsync", {"input": LONG_IMAGE}, wait=1000).json()
    assert set(answer) == {"id", "status"} and answer["status"] in ("IN_QUEUE", "IN_PROGRESS")
    post(pod, f"cancel/{answer['id']}")
    assert wait_final(pod, answer["id"])["status"] == "CANCELLED"


def test_finished_results_expire(pod: RunningPod) -> None:
    saved = pod.queue.run_retention_s, pod.queue.runsync_retention_s
    pod.queue.run_retention_s, pod.queue.runsync_retention_s = 0.6, 0.3
    try:
        synced = post(pod, "runsync", {"input": IMAGE}).json()
        queued = post(pod, "run", {"input": IMAGE}).json()["id"]
        assert synced["status"] == "COMPLETED" and wait_final(pod, queued)["status"] == "COMPLETED"
        time.sleep(0.35)
        assert requests.get(f"{pod.url}/status/{synced['id']}", headers=pod.auth).status_code == 404
        assert status(pod, queued)["status"] == "COMPLETED"  # /run keeps its result longer than /runsync
        time.sleep(0.6)
        assert requests.get(f"{pod.url}/status/{queued}", headers=pod.auth).status_code == 404
    finally:
        pod.queue.run_retention_s, pod.queue.runsync_retention_s = saved
    assert (pod.job_data / queued / "result.json").is_file()  # the record goes; the files on the volume stay
    assert not (pod.job_data / ".pod" / f"{queued}.json").exists()


def test_a_jobs_ttl_ends_it_whatever_its_state(pod: RunningPod) -> None:
    """policy.ttl counts from submission, as on RunPod: a job queued past it never runs, a running one stops at
    its next step, and either is then gone (404); a finished one goes at its ttl if that comes before its
    retention."""
    running = post(pod, "run", {"input": LONG_IMAGE, "policy": {"ttl": 1500}}).json()["id"]
    queued = post(pod, "run", {"input": IMAGE, "policy": {"ttl": 800}}).json()["id"]
    wait_running(pod, running)
    deadline = time.monotonic() + 30
    while requests.get(f"{pod.url}/status/{running}", headers=pod.auth, timeout=10).status_code != 404:
        assert time.monotonic() < deadline, status(pod, running)
        time.sleep(0.05)
    assert requests.get(f"{pod.url}/status/{queued}", headers=pod.auth, timeout=10).status_code == 404
    assert not (pod.job_data / queued).exists()  # it never ran
    assert not (pod.job_data / ".pod" / f"{running}.json").exists()
    # the queue goes on: the next job runs, and a finished one goes at its ttl, before its 30-minute retention
    done = post(pod, "runsync", {"input": IMAGE, "policy": {"ttl": 60_000}}).json()
    assert done["status"] == "COMPLETED"
    brief = post(pod, "runsync", {"input": IMAGE, "policy": {"ttl": 1000}}).json()
    assert brief["status"] == "COMPLETED" and status(pod, done["id"])["status"] == "COMPLETED"
    time.sleep(1.1)
    assert requests.get(f"{pod.url}/status/{brief['id']}", headers=pod.auth, timeout=10).status_code == 404


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ({"ttl": "1h"}, "policy.ttl: milliseconds, more than 0 and at most 604800000 (7 days)"),
        ({"executionTimeout": 0}, "policy.executionTimeout: milliseconds, more than 0 and at most 604800000"),
        ({"lowPriority": "yes"}, "policy.lowPriority: true or false"),
        ([1], "policy: expected an object"),
    ],
)
def test_a_bad_policy_is_refused_naming_its_field(pod: RunningPod, policy: Any, error: str) -> None:
    refused = post(pod, "run", {"input": IMAGE, "policy": policy})
    assert refused.status_code == 400 and refused.json()["error"].startswith(error)


def test_bodies_past_the_hosted_limits_are_refused(pod: RunningPod) -> None:
    big = {"input": {**IMAGE, "prompt": "x" * (11 * 1024 * 1024)}}
    refused = post(pod, "run", big)
    assert refused.status_code == 413
    assert refused.json() == {"error": "body: larger than the 10 MB this route takes (as on RunPod)"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it comes
        yield b'{"input": {"prompt": "'
        for _ in range(21):
            yield b"x" * (1024 * 1024)
        yield b'"}}'

    streamed = requests.post(f"{pod.url}/runsync", data=chunks(), headers=pod.auth, timeout=60)
    assert streamed.status_code == 413 and "20 MB" in streamed.json()["error"]
    assert post(pod, "runsync", {"input": IMAGE}).json()["status"] == "COMPLETED"


def test_records_survive_a_restart(pod: RunningPod) -> None:
    finished = post(pod, "runsync", {"input": IMAGE}).json()
    # a job that was running when the server died: its record on the volume still says IN_PROGRESS
    crashed = JobRecord(id="crashed-mid-job", request={"input": {**IMAGE, "seed": 9}}, retention_s=60)
    crashed.status, crashed.started_at = "IN_PROGRESS", time.time()
    RecordFiles(pod.job_data).save(crashed)

    restarted = PodQueue(pod.settings).bind(pod.worker)
    try:
        assert restarted.body(finished["id"]) == finished
        deadline = time.monotonic() + 60
        while not restarted.get(crashed.id).final:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert restarted.body(crashed.id)["output"]["seed"] == 9
    finally:
        restarted.stop()


class _Receiver(BaseHTTPRequestHandler):
    """Answers 500 to the first webhook call and 200 after, recording each body."""

    bodies: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(500 if len(self.bodies) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_webhook_is_called_when_the_job_ends_and_retried(pod: RunningPod) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    pod.queue.webhook_retry_delay_s = 0.05
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/done"
        job_id = post(pod, "run", {"input": IMAGE, "webhook": hook}).json()["id"]
        deadline = time.monotonic() + 60
        while len(_Receiver.bodies) < 2:
            assert time.monotonic() < deadline, _Receiver.bodies
            time.sleep(0.05)
        time.sleep(0.2)
        assert len(_Receiver.bodies) == 2  # delivered on the first retry, then no more calls
        assert _Receiver.bodies[1] == status(pod, job_id)
        assert (
            _Receiver.bodies[1]["status"] == "COMPLETED" and _Receiver.bodies[1]["output"]["job_id"] == job_id
        )
    finally:
        receiver.shutdown()


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "run"), ("POST", "runsync"), ("GET", "status/x"), ("POST", "status/x"), ("POST", "cancel/x"),
     ("GET", "stream/x"), ("POST", "retry/x"), ("POST", "purge-queue"), ("GET", "health"), ("GET", "ui/schema"),
     ("GET", "ui/jobs"), ("GET", "ui/files/x/y.png")],
)  # fmt: skip
def test_every_route_refuses_a_wrong_token(pod: RunningPod, method: str, route: str) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": POD_KEY}, {}):
        for url in (f"{pod.url}/{route}", f"{pod.url}/v2/x/{route}"):
            answer = requests.request(method, url, headers=headers, json={"input": IMAGE}, timeout=10)
            assert answer.status_code == 401, (url, headers)


def test_sdk_with_a_wrong_key_is_refused(pod: RunningPod, sdk: None) -> None:
    with pytest.raises(RuntimeError, match="401 Unauthorized"):
        runpod.Endpoint("my-pod", api_key="wrong").health()


def test_browser_login_sets_a_session_cookie(pod: RunningPod) -> None:
    session = requests.Session()
    form = session.get(f"{pod.url}/ui", timeout=10)
    assert form.status_code == 401 and 'name="token"' in form.text
    assert session.post(f"{pod.url}/ui/login", data={"token": "wrong"}, timeout=10).status_code == 401
    assert session.get(f"{pod.url}/ui?token={POD_KEY}", timeout=10).status_code == 401  # never in a URL
    page = session.post(f"{pod.url}/ui/login", data={"token": POD_KEY}, timeout=10)
    assert page.status_code == 200 and page.url == f"{pod.url}/ui" and POD_KEY not in str(session.cookies)
    assert session.get(f"{pod.url}/health", timeout=10).json()["workers"]["ready"] == 1


class _Form(StrictInput):
    text: str = Field(min_length=1, max_length=40, description="words")
    count: int = Field(default=3, ge=1, le=9)
    ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    mode: Literal["a", "b"] = "a"
    flag: bool = True
    lines: list[str] | None = Field(default=None, max_length=5)
    refs: list[LoraRef] = Field(default_factory=list)


def test_forms_are_built_from_the_schema_fields(pod: RunningPod) -> None:
    spec = {field["name"]: field for field in form_spec(_Form)}
    assert {name: (f["widget"], f["default"], f["bounds"], f["required"]) for name, f in spec.items()} == {
        "text": ("text", None, "≤ 40 characters", True),
        "count": ("int", 3, "1–9", False),
        "ratio": ("float", None, "> 0.0, ≤ 1.0", False),
        "mode": ("choice", "a", "", False),
        "flag": ("bool", True, "", False),
        "lines": ("lines", None, "≤ 5 items", False),
        "refs": ("json", [], "", False),
    }
    assert spec["mode"]["choices"] == ["a", "b"] and spec["text"]["description"] == "words"
    served = requests.get(f"{pod.url}/ui/schema", headers=pod.auth, timeout=10).json()["jobs"]
    assert [job["type"] for job in served] == ["image"]  # the types this worker serves
    assert [field["name"] for field in served[0]["fields"]] == [
        name for name in ImageJob.model_fields if name != "type"
    ]
    model = next(field for field in served[0]["fields"] if field["name"] == "model")
    # free text (a repo reference), offered the catalog families
    assert (model["widget"], model["choices"]) == ("text", ["sdxl-base", "z-image-turbo", "flux2-klein-4b"])


def test_ui_job_view_names_the_fields_and_serves_only_job_files(pod: RunningPod) -> None:
    failed = post(pod, "runsync", {"input": {**IMAGE, "width": 100, "steps": 0}}).json()
    view = requests.get(f"{pod.url}/ui/jobs/{failed['id']}", headers=pod.auth, timeout=10).json()
    assert view["status"] == "FAILED" and [issue["field"] for issue in view["issues"]] == ["width", "steps"]
    assert view["issues"][0]["reason"].startswith("must be a multiple of 8")
    done = post(pod, "runsync", {"input": IMAGE}).json()
    view = requests.get(f"{pod.url}/ui/jobs/{done['id']}", headers=pod.auth, timeout=10).json()
    image = requests.get(pod.url + view["outputs"][0]["url"], headers=pod.auth, timeout=10)
    assert image.content == Path(done["output"]["outputs"][0]["path"]).read_bytes()
    for path in (f"{done['id']}/..%2F..%2Fetc%2Fpasswd", ".pod/x.json", f"{done['id']}/missing.png"):
        assert requests.get(f"{pod.url}/ui/files/{path}", headers=pod.auth, timeout=10).status_code in (
            400,
            404,
        )
