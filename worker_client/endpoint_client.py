"""The client Morpheus uses to drive this worker's RunPod endpoint: submit, poll, cancel, fetch outputs.

It speaks RunPod's hosted serverless API (`https://api.runpod.ai/v2/<endpoint id>`) and the local development
server of `python handler.py --rp_serve_api`, whose `/status/<id>` is a POST that runs the job to its end: the
client runs that call in a background thread so `status` and `wait` behave the same on both.

Imports neither torch nor celery nor boto3: Morpheus's web and Celery processes use it without the GPU stack.
Where `fetch` reads the output files from is an `OutputSource` (worker_client/outputs.py).
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from worker_client.exceptions import (
    JOB_ERRORS,
    ClientError,
    PayloadTooLargeError,
    RequestError,
    TransientError,
    WaitTimeoutError,
)
from worker_client.outputs import BucketUrls, OutputSource, fetch_outputs

log = logging.getLogger(__name__)

HOSTED_API = "https://api.runpod.ai/v2"
RUN_LIMIT_BYTES = 10 * 1024 * 1024  # RunPod refuses bigger /run bodies
RUNSYNC_LIMIT_BYTES = 20 * 1024 * 1024
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


@dataclass(frozen=True)
class JobStatus:
    """One `/status` answer."""

    id: str
    status: str
    output: Any = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    def result(self) -> Any:
        """The output of a COMPLETED job; a typed `JobError` for the other final states."""
        if self.status == "COMPLETED":
            return self.output
        error_cls = JOB_ERRORS.get(self.status)
        if error_cls is None:
            raise ClientError(f"job {self.id} is {self.status}, not finished yet")
        raise error_cls(self.id, self.status, self.error or "no error text")

    @classmethod
    def parse(cls, body: dict[str, Any], job_id: str = "") -> JobStatus:
        error = body.get("error")
        if error is not None and not isinstance(error, str):
            error = json.dumps(error)
        return cls(str(body.get("id", job_id)), str(body.get("status", "")), body.get("output"), error, body)


def _retry_after_s(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class EndpointClient:
    """A RunPod endpoint (or the local API server) that runs this worker."""

    def __init__(
        self,
        endpoint_id: str | None = None,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        api_url: str = HOSTED_API,
        outputs: OutputSource | None = None,
        request_timeout_s: float = 30.0,
        max_retries: int = 5,
        retry_initial_s: float = 0.5,
        poll_initial_s: float = 0.5,
        poll_max_s: float = 5.0,
        max_retry_after_s: float = 60.0,
        wait_timeout_s: float = 3600.0,
    ) -> None:
        """`endpoint_id` + `api_key` for the hosted API (at `api_url`), or `base_url` for the local API server."""
        if (endpoint_id is None) == (base_url is None):
            raise ClientError(
                "give exactly one of endpoint_id (hosted API) or base_url (the local API server)"
            )
        self.base_url = (base_url or f"{api_url.rstrip('/')}/{endpoint_id}").rstrip("/")
        self.local_server = base_url is not None
        if not self.local_server and not api_key:
            raise ClientError("api_key: required for the hosted API (RunPod console → Settings → API Keys)")
        self.outputs = outputs
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.retry_initial_s = retry_initial_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.max_retry_after_s = max_retry_after_s
        self.wait_timeout_s = wait_timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = requests.Session()
        self._local_jobs: dict[str, _LocalJob] = {}

    def __repr__(self) -> str:
        return f"EndpointClient({self.base_url!r}{', local server' if self.local_server else ''})"

    # -- HTTP -----------------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        """One API call. 429 is retried (honouring Retry-After); network errors and 5xx only when `idempotent`."""
        what = f"{method} {self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            delay = min(self.retry_initial_s * 2**attempt, self.max_retry_after_s)
            try:
                response = self._session.request(
                    method,
                    self.base_url + path,
                    data=body,
                    params=params,
                    headers=self._headers,
                    timeout=timeout_s or self.request_timeout_s,
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                if idempotent and attempt < self.max_retries:
                    time.sleep(delay)
                    continue
                raise TransientError(f"{what}: {type(error).__name__}: {error}") from error
            status = response.status_code
            retryable = status == 429 or (status >= 500 and idempotent)
            if retryable and attempt < self.max_retries:
                time.sleep(min(_retry_after_s(response) or delay, self.max_retry_after_s))
                continue
            if status == 429 or status >= 500:
                raise TransientError(f"{what}: HTTP {status} {response.text[:300]}")
            if status >= 400:
                raise RequestError(f"{what}: HTTP {status} {response.text[:300]}{_hint(status)}", status)
            try:
                return response.json()
            except ValueError:
                raise ClientError(f"{what}: expected JSON, got {response.text[:200]!r}") from None
        raise AssertionError("unreachable")

    def _body(self, job: dict[str, Any], limit: int, route: str) -> bytes:
        request = job if "input" in job else {"input": job}
        body = json.dumps(request, separators=(",", ":")).encode()
        if len(body) > limit:
            raise PayloadTooLargeError(
                f"{route}: the request is {len(body) / 2**20:.1f} MB, over RunPod's {limit // (1024 * 1024)} MB limit; "
                "upload large files to the volume (the file gateway's POST /upload) and send their paths instead"
            )
        return body

    # -- jobs ------------------------------------------------------------------------------------------------

    def run(self, job: dict[str, Any]) -> str:
        """Queue a job (`{"input": {...}}` or the input itself); returns its id."""
        body = self._body(job, RUN_LIMIT_BYTES, "/run")
        job_id = str(self._request("POST", "/run", body=body, idempotent=False)["id"])
        if self.local_server:
            self._local_jobs[job_id] = _LocalJob(self, job_id)
        return job_id

    def run_sync(self, job: dict[str, Any], wait_s: float = 90.0) -> Any:
        """Run a job and return its output, waiting at most `wait_s` (then `WaitTimeoutError` with the job id)."""
        body = self._body(job, RUNSYNC_LIMIT_BYTES, "/runsync")
        started = time.monotonic()
        if self.local_server:
            try:
                answer = self._request("POST", "/runsync", body=body, timeout_s=wait_s, idempotent=False)
            except TransientError as error:
                if isinstance(error.__cause__, requests.Timeout):
                    raise WaitTimeoutError(
                        f"/runsync: no answer within {wait_s:.0f}s; the job goes on", None
                    ) from None
                raise
            return JobStatus.parse(answer).result()
        params = {"wait": int(min(max(wait_s, 1.0), 300.0) * 1000)}
        answer = self._request(
            "POST",
            "/runsync",
            body=body,
            params=params,
            timeout_s=wait_s + self.request_timeout_s,
            idempotent=False,
        )
        status = JobStatus.parse(answer)
        if status.is_final:
            return status.result()
        # /runsync answers with the job id when the job outlives its wait; go on polling for what is left
        return self.wait(status.id, timeout_s=max(0.0, wait_s - (time.monotonic() - started)))

    def status(self, job_id: str) -> JobStatus:
        """The job's current state (and its output or error once final)."""
        path = f"/status/{quote(job_id, safe='')}"
        if self.local_server:
            local = self._local_jobs.get(job_id)
            if local is not None:
                return local.status()
            # a job this client did not submit: the local server runs it during this call
            return JobStatus.parse(
                self._request("POST", path, timeout_s=self.wait_timeout_s, idempotent=False), job_id
            )
        return JobStatus.parse(self._request("GET", path), job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> Any:
        """Poll until the job is final; its output, or `JobFailedError` / `JobCancelledError` /
        `JobTimedOutError` with the worker's error text, or `WaitTimeoutError` after `timeout_s`."""
        timeout_s = self.wait_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        delay = self.poll_initial_s
        while True:
            status = self.status(job_id)
            if status.is_final:
                return status.result()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(f"job {job_id} still {status.status} after {timeout_s:.0f}s", job_id)
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, self.poll_max_s)

    def cancel(self, job_id: str) -> JobStatus:
        """Ask RunPod to cancel the job. The local server cannot stop a job: the client stops tracking it."""
        if self.local_server:
            local = self._local_jobs.get(job_id)
            if local is None:
                raise ClientError(
                    f"job {job_id}: unknown to this client; the local API server cannot cancel jobs"
                )
            return local.cancel()
        return JobStatus.parse(self._request("POST", f"/cancel/{quote(job_id, safe='')}"), job_id)

    def health(self) -> dict[str, Any]:
        """The endpoint's `/health` (`{"jobs": {...}, "workers": {...}}`); `{"local_server": true}` locally."""
        if self.local_server:
            self._request("GET", "/openapi.json")
            return {"local_server": True}
        return self._request("GET", "/health")

    # -- outputs ---------------------------------------------------------------------------------------------

    def fetch(self, result: dict[str, Any], dest_dir: str | Path) -> list[Path]:
        """Copy a result's output files into `dest_dir/<job id>/...`, checking sizes and SHA-256; their paths."""
        return fetch_outputs(result, Path(dest_dir), self.outputs or BucketUrls())


def _hint(status: int) -> str:
    if status in (401, 403):
        return " (check the API key: RUNPOD_API_KEY)"
    if status == 404:
        return " (check the endpoint id; a finished job's status is kept 30 minutes after /run, 1 minute after /runsync)"
    return ""


class _LocalJob:
    """A job on the local API server, run by a background POST /status so `status()` never blocks."""

    def __init__(self, client: EndpointClient, job_id: str) -> None:
        self._client = client
        self._job_id = job_id
        self._final: JobStatus | None = None
        self._failure: ClientError | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name=f"local-job-{job_id}", daemon=True).start()

    def _run(self) -> None:
        try:
            body = self._client._request(
                "POST",
                f"/status/{quote(self._job_id, safe='')}",
                timeout_s=self._client.wait_timeout_s,
                idempotent=False,
            )
            final, failure = JobStatus.parse(body, self._job_id), None
        except ClientError as error:
            final, failure = None, error
        with self._lock:
            if self._final is None:
                self._final, self._failure = final, failure

    def status(self) -> JobStatus:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            return self._final or JobStatus(self._job_id, "IN_PROGRESS")

    def cancel(self) -> JobStatus:
        with self._lock:
            if self._final is None and self._failure is None:
                log.warning(
                    "job %s: the local API server cannot stop a running job; its result will be ignored",
                    self._job_id,
                )
                self._final = JobStatus(self._job_id, "CANCELLED", error="cancelled by the client")
            return self._final or JobStatus(self._job_id, "FAILED", error=str(self._failure))
