"""A small HTTP server that answers like RunPod's hosted serverless API, for testing the client on loopback.

Each job follows the scenario its input names (`{"input": {"scenario": "fail", ...}}`): it is IN_QUEUE at the first
status poll, IN_PROGRESS at the second, and final at the third (`hang` never ends). `throttle(n)` answers the next
n requests with 429 + Retry-After, `fail_next(n)` with 503. Every request is recorded in `requests`.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FINAL = {"complete": "COMPLETED", "fail": "FAILED", "cancelled": "CANCELLED", "timed_out": "TIMED_OUT"}


@dataclass
class FakeJob:
    id: str
    input: dict[str, Any]
    polls: int = 0
    cancelled: bool = False

    @property
    def scenario(self) -> str:
        return str(self.input.get("scenario", "complete"))

    def body(self) -> dict[str, Any]:
        if self.cancelled:
            return {"id": self.id, "status": "CANCELLED"}
        if self.scenario == "hang" or self.polls < 2:
            return {"id": self.id, "status": "IN_QUEUE" if self.polls == 0 else "IN_PROGRESS"}
        status = FINAL[self.scenario]
        answer: dict[str, Any] = {"id": self.id, "status": status, "delayTime": 12, "executionTime": 34}
        if status == "COMPLETED":
            answer["output"] = self.input.get("output", {"echo": self.input})
        else:
            answer["error"] = self.input.get("error", f"{status.lower()} in the fake")
        return answer


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeRunpodApi:
    """The server: `EndpointClient(endpoint_id=api.endpoint_id, api_key=api.api_key, api_url=api.api_url)`."""

    api_key: str = "test-key"
    endpoint_id: str = "fake-endpoint"
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _throttle: int = 0
    _fail: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def api_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v2"

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle = count

    def fail_next(self, count: int) -> None:
        with self._lock:
            self._fail = count

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def start(self) -> FakeRunpodApi:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-runpod-api", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        prefix = f"/v2/{self.endpoint_id}"
        if not path.startswith(prefix + "/"):
            return 404, {"error": "no such endpoint"}
        route, _, job_id = path[len(prefix) + 1 :].partition("/")
        with self._lock:
            if method == "POST" and route in ("run", "runsync"):
                request = json.loads(body)
                job = FakeJob(f"{uuid.uuid4()}-u1", request["input"])
                self.jobs[job.id] = job
                if route == "runsync" and job.scenario != "hang" and "slow" not in job.input:
                    job.polls = 2
                    return 200, job.body()
                return 200, {"id": job.id, "status": "IN_QUEUE"}
            job = self.jobs.get(job_id)
            if job is None and route in ("status", "cancel"):
                return 404, {"error": f"request {job_id} does not exist"}
            if method == "GET" and route == "status":
                answer = job.body()
                job.polls += 1
                return 200, answer
            if method == "POST" and route == "cancel":
                job.cancelled = True
                return 200, {"id": job.id, "status": "CANCELLED"}
            if method == "GET" and route == "health":
                running = sum(1 for j in self.jobs.values() if j.body()["status"] == "IN_PROGRESS")
                return 200, {
                    "jobs": {"inProgress": running, "inQueue": 0},
                    "workers": {"idle": 1, "running": 0},
                }
        return 404, {"error": f"no route {method} {path}"}


def _handler_for(api: FakeRunpodApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            api.requests.append(
                Recorded(self.command, url.path, parse_qs(url.query), dict(self.headers), body)
            )
            with api._lock:
                throttled, failing = api._throttle > 0, api._throttle == 0 and api._fail > 0
                api._throttle -= throttled
                api._fail -= failing
            extra: dict[str, str] = {}
            if self.headers.get("Authorization") != f"Bearer {api.api_key}":
                status, answer = 401, {"error": "Unauthorized"}
            elif throttled:
                status, answer, extra = 429, {"error": "Too many requests"}, {"Retry-After": "1"}
            elif failing:
                status, answer = 503, {"error": "Service unavailable"}
            else:
                status, answer = api.answer(self.command, url.path, body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

    return Handler
