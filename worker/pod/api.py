"""The pod's HTTP server: the hosted serverless API's routes, answered as RunPod answers them, and the web UI.

Every route is served at the root and under `/v2/<any endpoint id>/`, so `runpod.Endpoint("anything")` with
`runpod.endpoint_url_base = "http://<pod>:<port>/v2"` works unchanged, and so does the project's EndpointClient.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from worker.config import Settings
from worker.pod.job_queue import PodQueue, UnknownJobError, policy_problem

log = logging.getLogger(__name__)

_ENDPOINT_PREFIX = re.compile(r"^/v2/[^/]+(/.*)$")
_SESSION_COOKIE = "pod_session"
_RUNSYNC_DEFAULT_WAIT_MS = 90_000  # the hosted /runsync's own default
_RUNSYNC_WAIT_MS = (1_000, 300_000)
_RUNSYNC_POLL_S = 0.05
LOCAL_HOST = "127.0.0.1"


def _not_found(job_id: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"request {job_id} does not exist (or its result expired)"}, status_code=404
    )


# the hosted API's payload limits: what a job sends a pod, it could send the endpoint
RUN_BODY_LIMIT = 10 * 1024 * 1024
RUNSYNC_BODY_LIMIT = 20 * 1024 * 1024


async def _request_body(request: Request, limit: int) -> dict[str, Any] | JSONResponse:
    too_large = JSONResponse(
        {"error": f"body: larger than the {limit // (1024 * 1024)} MB this route takes (as on RunPod)"},
        status_code=413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    raw = bytearray()
    async for chunk in request.stream():  # a body without a length is counted as it comes
        raw += chunk
        if len(raw) > limit:
            return too_large
    try:
        body = json.loads(bytes(raw) or b"null")
    except ValueError:
        return JSONResponse({"error": "body: not valid JSON"}, status_code=400)
    if not isinstance(body, dict) or "input" not in body:
        return JSONResponse({"error": 'input: required; send {"input": {...}}'}, status_code=400)
    if (problem := policy_problem(body)) is not None:
        return JSONResponse({"error": problem}, status_code=400)
    return body


def session_token(api_key: str) -> str:
    """The UI cookie's value: derived from the key, so the cookie never holds the key itself."""
    return hashlib.sha256(f"pod-ui-session:{api_key}".encode()).hexdigest()


class PodGate:
    """ASGI middleware: maps `/v2/<endpoint id>/<route>` onto `/<route>` and requires the bearer token (or the
    UI's session cookie) on every route, compared in constant time. A browser without the cookie gets a form
    asking for the key; posting it to `/ui/login` sets the cookie and leads back to `/ui`."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key
        self._bearer = f"Bearer {api_key}".encode() if api_key else b""
        self._session = session_token(api_key).encode() if api_key else b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        match = _ENDPOINT_PREFIX.match(scope["path"])
        if match:
            scope = {**scope, "path": match.group(1), "raw_path": match.group(1).encode()}
        if self.api_key is None or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        # the key comes in a POSTed form, never in a URL: URLs end up in access logs and the browser's history
        if scope["path"] == "/ui/login" and scope.get("method") == "POST":
            form = parse_qs((await _read_body(receive, _LOGIN_BODY_LIMIT)).decode(errors="replace"))
            token = form.get("token", [""])[0]
            if hmac.compare_digest(token.encode(), self.api_key.encode()):
                cookie = f"{_SESSION_COOKIE}={self._session.decode()}; Path=/; HttpOnly; SameSite=Strict"
                response: Response = Response(
                    status_code=303, headers={"Location": "/ui", "Set-Cookie": cookie}
                )
            else:
                response = Response(_LOGIN_PAGE, status_code=401, media_type="text/html")
        elif scope["path"].startswith("/ui"):
            response = Response(_LOGIN_PAGE, status_code=401, media_type="text/html")
        else:
            response = JSONResponse({"error": "Unauthorized: send Authorization: Bearer <POD_API_KEY>"}, 401)
        await response(scope, receive, send)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        headers = dict(scope.get("headers") or [])
        if hmac.compare_digest(headers.get(b"authorization", b""), self._bearer):
            return True
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == _SESSION_COOKIE.encode() and hmac.compare_digest(value, self._session):
                return True
        return False


async def _read_body(receive: Any, limit: int) -> bytes:
    body = b""
    while len(body) <= limit:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return body[:limit]


_LOGIN_BODY_LIMIT = 4096
_LOGIN_PAGE = """<!doctype html><meta charset="utf-8"><title>Pod worker</title>
<form method="post" action="/ui/login" style="font-family:sans-serif;margin:4em auto;max-width:24em">
<h2>Pod worker</h2><p>This pod needs its key (<code>POD_API_KEY</code>).</p>
<input name="token" type="password" placeholder="POD_API_KEY" autofocus style="width:100%">
<p><button type="submit">Open</button></p></form>"""


def create_app(queue: PodQueue, api_key: str | None, *, ui: bool = True) -> PodGate:
    """The ASGI app: the API routes, the web UI (unless `ui` is false), behind the token gate."""
    app = FastAPI(title="GPU worker (pod mode)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/run")
    async def run(request: Request) -> Response:
        body = await _request_body(request, RUN_BODY_LIMIT)
        if isinstance(body, JSONResponse):
            return body
        record = queue.submit(body)
        return JSONResponse({"id": record.id, "status": record.status})

    @app.post("/runsync")
    async def runsync(request: Request, wait: int = _RUNSYNC_DEFAULT_WAIT_MS) -> Response:
        body = await _request_body(request, RUNSYNC_BODY_LIMIT)
        if isinstance(body, JSONResponse):
            return body
        record = queue.submit(body, sync=True)
        deadline = time.monotonic() + min(max(wait, _RUNSYNC_WAIT_MS[0]), _RUNSYNC_WAIT_MS[1]) / 1000
        # polled on the event loop: a thread per waiting request would starve the thread pool under many waits
        try:
            while not queue.get(record.id).final and time.monotonic() < deadline:
                await asyncio.sleep(_RUNSYNC_POLL_S)
            answer = queue.body(record.id)
        except UnknownJobError:  # purged while it waited
            return _not_found(record.id)
        if answer["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            answer = {"id": record.id, "status": answer["status"]}
        return JSONResponse(answer)

    @app.api_route("/status/{job_id}", methods=["GET", "POST"])
    async def status(job_id: str) -> Response:
        try:
            return JSONResponse(queue.body(job_id))
        except UnknownJobError:
            return _not_found(job_id)

    @app.post("/cancel/{job_id}")
    async def cancel(job_id: str) -> Response:
        try:
            return JSONResponse(await asyncio.to_thread(queue.cancel, job_id))
        except UnknownJobError:
            return _not_found(job_id)

    @app.get("/stream/{job_id}")
    async def stream(job_id: str) -> Response:
        try:
            return JSONResponse(queue.take_stream(job_id))
        except UnknownJobError:
            return _not_found(job_id)

    @app.post("/retry/{job_id}")
    async def retry(job_id: str) -> Response:
        try:
            record = queue.retry(job_id)
        except UnknownJobError:
            return _not_found(job_id)
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"id": record.id, "status": record.status})

    @app.post("/purge-queue")
    async def purge_queue() -> Response:
        return JSONResponse({"removed": queue.purge(), "status": "completed"})

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse(queue.health())

    if ui:
        from worker.pod.web_ui import ui_router

        app.include_router(ui_router(queue))
    return PodGate(app, api_key)


def bind_host(host: str, api_key: str | None) -> str:
    """Where the server may listen: anywhere with a key, only on loopback without one."""
    if api_key is None and host != LOCAL_HOST:
        log.warning(
            "POD_API_KEY is not set: listening on %s only (not %s); set it to serve other machines",
            LOCAL_HOST,
            host,
        )
        return LOCAL_HOST
    return host


def serve(queue: PodQueue, settings: Settings, host: str, port: int) -> None:
    """Serve until interrupted, then stop the queue (a running job is cancelled and runs again on restart)."""
    import uvicorn

    host = bind_host(host, settings.pod_api_key)
    log.info("pod API on http://%s:%d (routes at / and /v2/<any id>/), web UI at /ui", host, port)
    try:
        uvicorn.run(
            create_app(queue, settings.pod_api_key),
            host=host,
            port=port,
            log_level=settings.log_level.lower(),
        )
    finally:
        queue.stop()
