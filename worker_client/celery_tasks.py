"""Celery tasks that drive the endpoint for Morpheus: submit a job, wait, fetch its files, return local paths.

    celery -A worker_client.celery_tasks worker --pool prefork     # broker: CELERY_BROKER_URL

Each task takes a job input (this worker's fields, or Morpheus's `workflow_name` envelope) and returns
`{"job_id", "result", "files"}`: the RunPod job id, the worker's result (Morpheus's `*_pod_path` keys included)
and the local paths of its files under `FETCH_DIR/<job id>/`. Endpoints come from `worker_client.endpoints` (the same
environment variables as Morpheus's config). Network errors, 5xx and 429 retry the task, which then resumes
waiting on the same RunPod job instead of submitting it again. Revoking a running task with `terminate=True`
(prefork pool) cancels its RunPod job. Celery is an optional extra: `pip install '.[celery]'`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from worker_client.client_settings import ClientSettings
from worker_client.endpoint_client import EndpointClient
from worker_client.endpoints import microservice_endpoints
from worker_client.exceptions import ClientError, TransientError
from worker_client.jobs import REGISTRY

log = logging.getLogger(__name__)

SETTINGS = ClientSettings.from_env()
# set_as_current=False: importing this module inside Morpheus must not replace Morpheus's own Celery app
app = Celery(
    "gpu_worker",
    broker=SETTINGS.celery_broker_url,
    backend=SETTINGS.celery_result_backend,
    set_as_current=False,
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

WAIT_TIMEOUT_S = {job.name: job.wait_timeout_s for job in REGISTRY}
MAX_RETRIES = 5


class TaskTerminated(Exception):
    """The Celery task was revoked with terminate=True while its job ran."""


_clients: dict[str, EndpointClient] | None = None


def client_for(job_type: str) -> EndpointClient:
    """The endpoint client of `job_type`, built once per process from the environment."""
    global _clients
    if _clients is None:
        _clients = microservice_endpoints(SETTINGS)
    if job_type not in _clients:
        raise ClientError(
            f"no endpoint for {job_type!r} jobs: set RUNPOD_ENDPOINT_ID or RUNPOD_ENDPOINT_ID_{job_type.upper()}"
        )
    return _clients[job_type]


@contextlib.contextmanager
def cancel_on_termination(client: EndpointClient, job_id: str) -> Iterator[None]:
    """Cancel the RunPod job when the task is terminated (SIGTERM from revoke) or hits its soft time limit."""

    def terminated(signum: int, frame: Any) -> None:
        raise TaskTerminated(f"task terminated by signal {signum}")

    # signal handlers belong to the main thread: the prefork pool runs tasks there, thread pools do not
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        yield
    except (TaskTerminated, SoftTimeLimitExceeded):
        log.warning("task stopped: cancelling RunPod job %s", job_id)
        try:
            client.cancel(job_id)
        except ClientError as error:
            log.error("could not cancel RunPod job %s: %s", job_id, error)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def run_job(
    task: Task,
    job_type: str,
    job_input: dict[str, Any],
    dest_dir: str | None,
    timeout_s: float | None,
    runpod_job_id: str | None,
) -> dict[str, Any]:
    if not isinstance(job_input, dict):
        raise ClientError(f"job_input: expected a JSON object, got {type(job_input).__name__}")
    job = dict(job_input)
    if "workflow_name" not in job and job.setdefault("type", job_type) != job_type:
        raise ClientError(f"type: this task runs {job_type!r} jobs, the input says {job['type']!r}")
    client = client_for(job_type)
    dest = Path(dest_dir) if dest_dir else SETTINGS.fetch_dir
    job_id = runpod_job_id
    try:
        if job_id is None:
            job_id = client.run({"input": job})
            log.info("%s job submitted as RunPod job %s", job_type, job_id)
        with cancel_on_termination(client, job_id):
            result = client.wait(job_id, timeout_s or WAIT_TIMEOUT_S[job_type])
            files = client.fetch(result, dest)
    except TransientError as error:
        if task.request.retries >= MAX_RETRIES:
            raise
        countdown = min(SETTINGS.task_retry_delay_s * 2**task.request.retries, 300.0)
        log.warning("%s; retry %d in %.1fs", error, task.request.retries + 1, countdown)
        kwargs = {**task.request.kwargs, "runpod_job_id": job_id}
        raise task.retry(args=task.request.args, kwargs=kwargs, exc=error, countdown=countdown) from error
    return {"job_id": job_id, "result": result, "files": [str(path.resolve()) for path in files]}


def _task(job_type: str, name: str) -> Task:
    def run(
        self: Task,
        job_input: dict[str, Any],
        dest_dir: str | None = None,
        timeout_s: float | None = None,
        runpod_job_id: str | None = None,
    ) -> dict[str, Any]:
        return run_job(self, job_type, job_input, dest_dir, timeout_s, runpod_job_id)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Run a {job_type} job on the endpoint; its result and the local paths of its files."
    return shared_task(bind=True, name=f"{__name__}.{name}", max_retries=MAX_RETRIES)(run)


# one task per job type, named by the registry (generate_image, generate_dataset, train_lora, generate_music)
TASKS: dict[str, Task] = {job.name: _task(job.name, job.celery_task) for job in REGISTRY}
globals().update({job.celery_task: TASKS[job.name] for job in REGISTRY})
