"""The pod's job queue: jobs in submission order, run one at a time by one thread on the one GPU.

A job goes IN_QUEUE → IN_PROGRESS → COMPLETED / FAILED / CANCELLED / TIMED_OUT. A finished job's record is kept
`retention_s` after it ended (30 minutes after `/run`, 1 minute after `/runsync`, as on RunPod), then forgotten;
its files stay on the volume. A job with `policy.ttl` is gone once that long has passed since it was submitted,
whatever its state, as on RunPod: still queued, it never runs; running, it stops at its next step. Records are on the volume (`job_records`), so a restart picks up where it was: queued
jobs and a job that was running when the server stopped run (again) in their order.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Protocol

from worker.config import Settings
from worker.job_folders import JobStore, UnsafePathError
from worker.pod import webhooks
from worker.pod.job_records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    TIMED_OUT,
    JobRecord,
    RecordFiles,
    new_job_id,
)

log = logging.getLogger(__name__)

_SWEEP_S = 30.0  # how often finished records are checked for expiry while the queue is idle


class JobRunner(Protocol):
    """What the queue needs of `worker.worker.Worker`."""

    store: JobStore
    jobs: tuple[str, ...]

    def handle_sync(
        self, job: dict[str, Any], cancel_event: threading.Event | None = None
    ) -> dict[str, Any]: ...


class UnknownJobError(KeyError):
    """No record of this job id: never submitted here, purged, or expired."""


class PodQueue:
    """Bind it to the worker whose progress it relays (`Worker(settings, progress_sink=queue.on_progress)`)."""

    def __init__(self, settings: Settings) -> None:
        self.run_retention_s = settings.pod_run_retention_s
        self.runsync_retention_s = settings.pod_runsync_retention_s
        self.webhook_retries = 2
        self.webhook_retry_delay_s = 10.0
        self.worker: JobRunner | None = None
        self._files: RecordFiles | None = None
        self._records: dict[str, JobRecord] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._progress: dict[str, dict[str, Any]] = {}
        self._stream: dict[str, list[dict[str, Any]]] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._timed_out: set[str] = set()
        self._retried = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------------------

    def bind(self, worker: JobRunner) -> PodQueue:
        """Load the records on the worker's volume and start the job thread."""
        self.worker = worker
        self._files = RecordFiles(worker.store.root)
        now = time.time()
        with self._cond:
            for record in self._files.load_all():
                if record.expired(now):
                    self._files.remove(record.id)
                    continue
                if not record.final:
                    if record.status == IN_PROGRESS:
                        log.info("job %s was running when the server stopped; it runs again", record.id)
                    record.status, record.started_at = IN_QUEUE, None
                    self._files.save(record)
                    self._queue.append(record.id)
                self._records[record.id] = record
            log.info("pod queue: %d job(s) on record, %d queued", len(self._records), len(self._queue))
        self._thread = threading.Thread(target=self._run_loop, name="pod-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs; a running job is cancelled (it runs again after a restart)."""
        with self._cond:
            self._stopping = True
            for event in self._cancel.values():
                event.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- requests --------------------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any], *, sync: bool = False) -> JobRecord:
        """Queue `{"input": ..., "webhook"?, "policy"?, "s3Config"?}` (its policy checked by `policy_problem`);
        `sync` for `/runsync`'s retention."""
        policy = request.get("policy") or {}
        timeout_ms, ttl_ms = policy.get("executionTimeout"), policy.get("ttl")
        record = JobRecord(
            id=new_job_id(),
            request={key: request[key] for key in ("input", "s3Config") if key in request},
            retention_s=self.runsync_retention_s if sync else self.run_retention_s,
            webhook=request.get("webhook") if isinstance(request.get("webhook"), str) else None,
            execution_timeout_s=timeout_ms / 1000 if timeout_ms is not None else None,
            ttl_s=ttl_ms / 1000 if ttl_ms is not None else None,
        )
        with self._cond:
            self._save(record)
            self._records[record.id] = record
            self._queue.append(record.id)
            self._cond.notify_all()
        log.info("job %s: queued (%d ahead)", record.id, len(self._queue) - 1)
        return record

    def get(self, job_id: str) -> JobRecord:
        with self._cond:
            self._expire()
            record = self._records.get(job_id)
            if record is None:
                raise UnknownJobError(job_id)
            return record

    def body(self, job_id: str) -> dict[str, Any]:
        """The job's `/status` answer."""
        record = self.get(job_id)
        if record.status == COMPLETED:
            return record.body(self._read_output(record))
        return record.body(self._progress.get(job_id) if record.status == IN_PROGRESS else None)

    def cancel(self, job_id: str, wait_s: float = 2.5) -> dict[str, Any]:
        """Cancel a queued job at once, a running one at its next step. The answer waits up to `wait_s` for the
        job to stop and its partial outputs to go; a job still stopping then is CANCELLED from now on, as on
        RunPod, and the next job starts once it has stopped. A finished job is left as it is."""
        with self._cond:
            record = self.get(job_id)
            if record.status == IN_QUEUE:
                self._queue.remove(job_id)
                self._finish(record, CANCELLED, "cancelled: the job was cancelled before it started")
            elif record.status == IN_PROGRESS:
                self._cancel[job_id].set()
                deadline = time.monotonic() + wait_s
                while not record.final and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if not record.final:
                    self._finish(
                        record, CANCELLED, "cancelled: stopping at its next step; no outputs are kept"
                    )
            return {"id": job_id, "status": record.status}

    def retry(self, job_id: str) -> JobRecord:
        """Queue a FAILED or TIMED_OUT job again, with the same id and input."""
        with self._cond:
            record = self.get(job_id)
            if record.status not in (FAILED, TIMED_OUT):
                raise ValueError(
                    f"id: job {job_id} is {record.status}; only FAILED or TIMED_OUT jobs are retried"
                )
            record.status, record.error = IN_QUEUE, None
            record.started_at = record.finished_at = None
            record.retries += 1
            self._retried += 1
            self._save(record)
            self._queue.append(job_id)
            self._cond.notify_all()
            return record

    def purge(self) -> int:
        """Drop every job still waiting (not the running one); how many."""
        with self._cond:
            removed = list(self._queue)
            self._queue.clear()
            for job_id in removed:
                self._records.pop(job_id, None)
                self._forget_files(job_id)
            self._cond.notify_all()
        log.info("purged %d queued job(s)", len(removed))
        return len(removed)

    def health(self) -> dict[str, Any]:
        """The hosted `/health` answer: job counts by state, and this pod's one worker."""
        with self._cond:
            self._expire()
            counts = collections.Counter(record.status for record in self._records.values())
            running = counts[IN_PROGRESS]
        return {
            "jobs": {
                "completed": counts[COMPLETED],
                "failed": counts[FAILED] + counts[TIMED_OUT],
                "inProgress": running,
                "inQueue": counts[IN_QUEUE],
                "retried": self._retried,
            },
            "workers": {
                "idle": 1 - running,
                "running": running,
                "initializing": 0,
                "ready": 1,
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    def records(self) -> list[JobRecord]:
        """Every job on record, newest first."""
        with self._cond:
            self._expire()
            return sorted(self._records.values(), key=lambda record: record.submitted_at, reverse=True)

    def take_stream(self, job_id: str) -> dict[str, Any]:
        """The `/stream` answer: the progress updates since the last call (each is handed out once)."""
        with self._cond:
            record = self.get(job_id)
            items = self._stream.pop(job_id, [])
        return {"id": job_id, "status": record.status, "stream": [{"output": item} for item in items]}

    def on_progress(self, job: dict[str, Any], payload: dict[str, Any]) -> None:
        """The worker's progress sink: the latest update is the running job's `output`, every one a stream item."""
        job_id = str(job.get("id", ""))
        with self._cond:
            record = self._records.get(job_id)
            if record is not None and not record.final:  # a cancelled job may report a step while it stops
                self._progress[job_id] = payload
                self._stream.setdefault(job_id, []).append(payload)

    # -- the job thread --------------------------------------------------------------------------------------

    def _run_loop(self) -> None:
        while True:
            with self._cond:
                self._expire()  # a queued job whose ttl ended never starts
                while not self._queue and not self._stopping:
                    self._cond.wait(_SWEEP_S)
                    self._expire()
                if self._stopping:
                    return
                record = self._records[self._queue.popleft()]
                record.status, record.started_at = IN_PROGRESS, time.time()
                cancel_event = self._cancel[record.id] = threading.Event()
                self._save(record)
            self._run(record, cancel_event)

    def _run(self, record: JobRecord, cancel_event: threading.Event) -> None:
        timers = []
        if record.execution_timeout_s is not None:
            timers.append(
                threading.Timer(record.execution_timeout_s, self._time_out, (record.id, cancel_event))
            )
        if record.ttl_s is not None:
            left = record.submitted_at + record.ttl_s - time.time()
            timers.append(threading.Timer(max(left, 0.0) + 0.01, self._ttl_ended))
        for timer in timers:
            timer.start()
        assert self.worker is not None
        try:
            answer = self.worker.handle_sync({"id": record.id, **record.request}, cancel_event)
        except Exception as error:  # the job thread must outlive any job
            log.exception("job %s: the worker raised", record.id)
            answer = {"error": f"internal error: {type(error).__name__}: {error}"}
        finally:
            for timer in timers:
                timer.cancel()
        with self._cond:
            self._cancel.pop(record.id, None)
            if self._stopping and cancel_event.is_set():
                return  # the server is stopping: the record stays IN_PROGRESS and runs again after a restart
            if self._records.get(record.id) is not record:
                log.info("job %s: stopped; its ttl ended while it ran", record.id)
                return  # expired meanwhile: its record is gone, as on RunPod
            if record.final:
                log.info("job %s: stopped after its cancel", record.id)
                return  # cancel() recorded it while it was stopping
            error = answer.get("error") if isinstance(answer, dict) else None
            if error is None:
                self._finish(record, COMPLETED, None)
            elif record.id in self._timed_out:
                self._finish(record, TIMED_OUT, f"timed out: ran past its executionTimeout; {error}")
            elif cancel_event.is_set():
                self._finish(record, CANCELLED, str(error))
            else:
                self._finish(record, FAILED, str(error))

    def _ttl_ended(self) -> None:
        with self._cond:
            self._expire()

    def _time_out(self, job_id: str, cancel_event: threading.Event) -> None:
        with self._cond:
            self._timed_out.add(job_id)
        cancel_event.set()
        log.info("job %s: past its executionTimeout; stopping at the next step", job_id)

    # -- helpers (called with the lock held) -----------------------------------------------------------------

    def _finish(self, record: JobRecord, status: str, error: str | None) -> None:
        record.status, record.error, record.finished_at = status, error, time.time()
        self._timed_out.discard(record.id)
        self._progress.pop(record.id, None)
        self._save(record)
        self._cond.notify_all()
        log.info("job %s: %s", record.id, status)
        if record.webhook:
            body = self.body(record.id) if status == COMPLETED else record.body()
            webhooks.send_in_background(
                record.webhook, body, retries=self.webhook_retries, delay_s=self.webhook_retry_delay_s
            )

    def _read_output(self, record: JobRecord) -> Any:
        assert self.worker is not None
        try:
            return self.worker.store.read_result(record.id)
        except (OSError, ValueError, UnsafePathError) as error:
            log.warning("job %s: result.json unreadable: %s", record.id, error)
            return None

    def _expire(self) -> None:
        now = time.time()
        for job_id in [job_id for job_id, record in self._records.items() if record.expired(now)]:
            record = self._records.pop(job_id)
            self._stream.pop(job_id, None)
            self._forget_files(job_id)
            if record.final:
                continue
            log.info("job %s: its ttl ended while it was %s; removed", job_id, record.status)
            if job_id in self._queue:
                self._queue.remove(job_id)
            if (event := self._cancel.get(job_id)) is not None:
                event.set()  # running: it stops at its next step

    def _save(self, record: JobRecord) -> None:
        assert self._files is not None, "bind(worker) first"
        self._files.save(record)

    def _forget_files(self, job_id: str) -> None:
        assert self._files is not None
        self._files.remove(job_id)


_MAX_POLICY_MS = 7 * 24 * 3600 * 1000  # the hosted API's limit for both


def policy_problem(request: dict[str, Any]) -> str | None:
    """What is wrong with a request's `policy`, named as `policy.<field>`; None when nothing is. The hosted API's
    minimums (5 s, 10 s) are not kept: on a pod, tests and quick checks may want less."""
    policy = request.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, dict):
        return 'policy: expected an object such as {"executionTimeout": 600000, "ttl": 86400000}'
    for name in ("executionTimeout", "ttl"):
        value = policy.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _MAX_POLICY_MS:
            return f"policy.{name}: milliseconds, more than 0 and at most {_MAX_POLICY_MS} (7 days)"
    if not isinstance(policy.get("lowPriority", False), bool):
        return "policy.lowPriority: true or false"
    return None
