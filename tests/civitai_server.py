"""A small HTTP server that speaks CivitAI's download API, and serves plain files for `https://…` references.

    GET /api/v1/model-versions/{id}   {"id", "baseModel", "model": {"type"}, "files": [{"name", "sizeKB", "type",
                                      "primary", "hashes": {"SHA256"}, "downloadUrl", "metadata"}]}
    GET /api/download/models/{id}     needs `Authorization: Bearer <token>` (401 without, 403 with another); 302 to
                                      the CDN on another host name (localhost instead of 127.0.0.1), signed query
    GET /cdn/{sha256}?sig=…, /files/{name}   the bytes (Range -> 206)

It counts requests, the file bytes it sends, and the Authorization header of every request (to check where a token
went), and can throttle each response like the fake Hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from hub_server import HubStats

_CHUNK = 64 * 1024


@dataclass
class FakeVersion:
    """A model version with one file. `served` replaces the bytes sent (a corrupted transfer)."""

    version_id: int
    name: str
    content: bytes
    base_model: str = "SDXL 1.0"
    model_type: str = "Checkpoint"
    served: bytes | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


class FakeCivitai:
    """The server; use as a context manager. `files` are the plain files under /files/."""

    def __init__(self, versions: list[FakeVersion] = (), *, token: str = "civitai_fake_token") -> None:
        self.versions = {v.version_id: v for v in versions}
        self.files: dict[str, bytes] = {}
        self.token = token
        self.throttle_bps = 0.0
        self.stats = HubStats()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-civitai",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def add(self, version: FakeVersion) -> FakeVersion:
        self.versions[version.version_id] = version
        return version

    def reset_stats(self) -> None:
        self.stats = HubStats()

    def __enter__(self) -> FakeCivitai:  # noqa: PYI034 - the same object
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def describe(self, version: FakeVersion) -> dict:
        return {
            "id": version.version_id,
            "modelId": 1000 + version.version_id,
            "baseModel": version.base_model,
            "model": {"name": version.name, "type": version.model_type},
            "files": [
                {
                    "name": "preview.pt",
                    "sizeKB": 1.0,
                    "type": "Training Data",
                    "primary": False,
                    "hashes": {},
                },
                {
                    "name": version.name,
                    "sizeKB": len(version.content) / 1024,
                    "type": "Model",
                    "primary": True,
                    "metadata": {"format": "SafeTensor", "fp": "fp16"},
                    "hashes": {"SHA256": version.sha256.upper(), "CRC32": "0"},
                    "downloadUrl": f"{self.api_url}/download/models/{version.version_id}",
                },
            ],
        }


def _handler_for(server: FakeCivitai) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def handle(self) -> None:
            # a client that read only the headers (a length probe) closes the connection under our feet
            try:
                super().handle()
            except ConnectionResetError:
                pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            auth = self.headers.get("Authorization")
            if match := re.fullmatch(r"/api/v1/model-versions/(\d+)", path):
                server.stats.count("api", auth)
                version = server.versions.get(int(match[1]))
                if version is None:
                    self._json(404, {"error": "Model not found"})
                else:
                    self._json(200, server.describe(version))
            elif match := re.fullmatch(r"/api/download/models/(\d+)", path):
                server.stats.count("download", auth)
                version = server.versions.get(int(match[1]))
                if version is None:
                    self._json(404, {"error": "Model not found"})
                elif auth is None:
                    self._json(401, {"error": "Unauthorized", "message": "The creator requires a login"})
                elif auth != f"Bearer {server.token}":
                    self._json(403, {"error": "Forbidden"})
                else:
                    self.send_response(307)
                    location = (
                        f"http://localhost:{server.port}/cdn/{version.sha256}?sig=signed-{time.time_ns()}"
                    )
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
            elif match := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                server.stats.count("cdn", auth)
                found = [v for v in server.versions.values() if v.sha256 == match[1]]
                if not found:
                    self._json(404, {"error": "no such blob"})
                else:
                    self._send(f"cdn/{found[0].name}", found[0].served or found[0].content, found[0].sha256)
            elif match := re.fullmatch(r"/files/(.+)", path):
                server.stats.count("files", auth)
                name = unquote(match[1])
                if name not in server.files:
                    self._json(404, {"error": "not found"})
                else:
                    content = server.files[name]
                    self._send(f"files/{name}", content, hashlib.sha256(content).hexdigest())
            else:
                server.stats.count("other", auth)
                self._json(404, {"error": f"no route for {path}"})

        def _send(self, label: str, content: bytes, etag: str) -> None:
            start, end, status = 0, len(content), 200
            if (ranged := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))) is not None:
                start = int(ranged[1])
                end = min(int(ranged[2]) + 1, len(content)) if ranged[2] else len(content)
                status = 206
            self.send_response(status)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
            self.end_headers()
            began, sent = time.monotonic(), 0
            try:
                for offset in range(start, end, _CHUNK):
                    chunk = content[offset : min(offset + _CHUNK, end)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    server.stats.sent(label, len(chunk))
                    if server.throttle_bps:
                        time.sleep(max(0.0, began + sent / server.throttle_bps - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
