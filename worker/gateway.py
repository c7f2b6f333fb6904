"""A file gateway for the volume's job folders, for a CPU pod that mounts the endpoint's network volume.

Speaks the routes of the file server Morpheus runs today (`POST /upload`, `GET /download/<path>`,
`POST /cleanup/<worker_job_id>`, `GET /health`), but reads and writes only inside `<job_data>/<job id>/`: no
absolute paths elsewhere, no `..`, no hidden temp files, sanitized upload names, a size cap, and, when
GATEWAY_TOKEN is set, a bearer token on every route but /health.

    python -m worker.gateway [--host 0.0.0.0] [--port 8000]
"""

from __future__ import annotations

import argparse
import hmac
import logging
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from cache.volume import POD_MOUNT, SERVERLESS_MOUNT, resolve_volume
from worker.config import Settings
from worker.job_folders import JobStore, UnsafePathError, safe_relpath, validate_job_id
from worker.logs import configure_logging
from worker.schemas.common import quoted

log = logging.getLogger(__name__)

UPLOAD_FOLDER = "inputs"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 128
_MAX_COMPONENT_BYTES = 255  # longer names make the file system raise ENAMETOOLONG


class _TooLarge(Exception):
    pass


def clean_filename(name: str) -> str:
    """The last component of an uploaded file's name, reduced to letters, digits, '.', '_' and '-'."""
    base = re.split(r"[\\/]", name or "")[-1]
    cleaned = _UNSAFE_NAME_CHARS.sub("_", base).lstrip("._")
    if len(cleaned) > _MAX_NAME:
        stem, dot, suffix = cleaned.rpartition(".")
        cleaned = (
            stem[: _MAX_NAME - len(suffix) - 1] + dot + suffix
            if dot and len(suffix) < 16
            else cleaned[:_MAX_NAME]
        )
    if not cleaned:
        raise UnsafePathError(
            f"file name {quoted(name)}: nothing usable is left after removing unsafe characters"
        )
    return cleaned


class JobFiles:
    """The job folders the gateway may touch, and how a requested path maps onto them."""

    def __init__(self, job_data: Path) -> None:
        self.store = JobStore(job_data)
        self.root = job_data.resolve()
        # the same volume is /runpod-volume on serverless workers and /workspace on pods: accept both spellings
        self._prefixes = tuple(
            f"{base}/" for base in {str(self.root), f"{SERVERLESS_MOUNT}/job_data", f"{POD_MOUNT}/job_data"}
        ) + ("job_data/",)

    def resolve(self, requested: str) -> Path:
        """The file a download names: `<job id>/<file>`, optionally after `job_data/` or an absolute job_data path."""
        text = requested
        for prefix in self._prefixes:
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        else:
            if text.startswith("/"):
                raise UnsafePathError(
                    f"{quoted(requested)}: only files in the volume's job folders are served"
                )
        relpath = safe_relpath(text)
        if any(len(part.encode()) > _MAX_COMPONENT_BYTES for part in relpath.parts):
            raise UnsafePathError(
                f"{quoted(requested)}: a name in the path is over {_MAX_COMPONENT_BYTES} bytes"
            )
        if len(relpath.parts) < 2 or any(part.startswith(".") for part in relpath.parts):
            raise UnsafePathError(
                f"{quoted(requested)}: give '<job id>/<file>' (files in progress are not served)"
            )
        validate_job_id(relpath.parts[0])
        target = self.root.joinpath(*relpath.parts)
        if not target.resolve().is_relative_to(self.root / relpath.parts[0]):
            raise UnsafePathError(f"{quoted(requested)}: resolves outside its job folder")
        return target

    def pod_path(self, relpath: str) -> str:
        return str(self.root / PurePosixPath(relpath))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings, job_data: Path) -> Starlette:
    """The gateway's ASGI app over `job_data`."""
    files = JobFiles(job_data)
    token = settings.gateway_token
    max_bytes = settings.gateway_max_upload_bytes

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def check(request: Request) -> Response:
            if token is not None:
                scheme, _, given = request.headers.get("Authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
                    response = _error(401, "missing or wrong bearer token (GATEWAY_TOKEN)")
                    response.headers["WWW-Authenticate"] = "Bearer"
                    return response
            try:
                return await endpoint(request)
            except UnsafePathError as error:
                return _error(400, str(error))

        return check

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "message": "File gateway is running."})

    async def upload(request: Request) -> Response:
        declared = int(request.headers.get("Content-Length") or 0)
        if declared > max_bytes + 64 * 1024:  # the multipart framing around the file
            return _error(413, f"upload is over the {max_bytes}-byte limit (GATEWAY_MAX_UPLOAD_BYTES)")
        received = 0

        async def capped_receive() -> Any:
            nonlocal received
            message = await request.receive()
            received += len(message.get("body", b""))
            if received > max_bytes + 64 * 1024:
                raise _TooLarge
            return message

        try:
            form = await Request(request.scope, capped_receive).form(max_files=1, max_fields=8)
        except _TooLarge:
            return _error(413, f"upload is over the {max_bytes}-byte limit (GATEWAY_MAX_UPLOAD_BYTES)")
        except HTTPException as error:
            return _error(400, f"not a multipart form: {error.detail}")
        try:
            upload_file, job_id = form.get("file"), str(form.get("worker_job_id") or "")
            if not isinstance(upload_file, UploadFile) or not upload_file.filename:
                return _error(400, "file: required (a multipart file part named 'file')")
            if not job_id:
                return _error(400, "worker_job_id: required")
            if (upload_file.size or 0) > max_bytes:
                return _error(413, f"upload is over the {max_bytes}-byte limit (GATEWAY_MAX_UPLOAD_BYTES)")
            folder = files.store.job(validate_job_id(job_id))
            relpath = f"{UPLOAD_FOLDER}/{clean_filename(upload_file.filename)}"

            def copy(temp: Path) -> None:
                with temp.open("wb") as writer:
                    shutil.copyfileobj(upload_file.file, writer, 1 << 20)

            written = await run_in_threadpool(folder.write_with, relpath, copy, "upload")
        finally:
            await form.close()
        log.info("upload %s (%d bytes)", written.relpath, written.bytes)
        body = {
            "message": "File uploaded successfully",
            "pod_path": files.pod_path(written.relpath),
            "relpath": written.relpath,
            "worker_job_id": job_id,
            "bytes": written.bytes,
            "sha256": written.sha256,
        }
        return JSONResponse(body, status_code=201)

    async def download(request: Request) -> Response:
        target = files.resolve(request.path_params["path"])
        if not target.is_file():
            return _error(404, "File not found")
        return FileResponse(target, filename=target.name)

    async def cleanup(request: Request) -> Response:
        folder = files.store.job(request.path_params["worker_job_id"])
        folder.check_inside()  # rmtree refuses a link, but only after the check a caller should get as a 400
        job_id = folder.job_id
        if not folder.path.is_dir():
            return _error(404, "Job directory not found")
        await run_in_threadpool(shutil.rmtree, folder.path)
        log.info("cleaned up %s", folder.path)
        return JSONResponse({"message": f"Successfully cleaned up files for job {job_id}"})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/upload", guarded(upload), methods=["POST"]),
        Route("/download/{path:path}", guarded(download), methods=["GET"]),
        Route("/cleanup/{worker_job_id}", guarded(cleanup), methods=["POST"]),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default 8000, as Morpheus's file server)"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    volume = resolve_volume(settings.volume_root)
    volume.configure_environment()  # uploads spool through TMPDIR: keep it on the volume
    job_data = volume.job_data_dir(settings.job_data_dir)
    job_data.mkdir(parents=True, exist_ok=True)
    if settings.gateway_token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "GATEWAY_TOKEN is not set: anyone who reaches %s:%d can read and write job files",
            args.host,
            args.port,
        )
    log.info("file gateway on %s:%d serving %s", args.host, args.port, job_data)
    import uvicorn

    uvicorn.run(create_app(settings, job_data), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
