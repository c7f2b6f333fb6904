"""A small HTTP server that speaks enough of the Hugging Face Hub protocol for the real `huggingface_hub` client.

Point the client at it with `HF_ENDPOINT=<hub.endpoint>`. It serves:
    GET  /api/models/{repo}/revision/{rev}        {"id", "sha", "siblings"}
    GET  /api/models/{repo}/tree/{rev}[/{folder}][?recursive=true]  entries with type, path, size, oid and, for
                                                  LFS files, lfs (without recursive: the folder's own entries)
    HEAD /{repo}/resolve/{rev}/{path}             small files: ETag, X-Repo-Commit, Content-Length;
                                                  LFS files: 302 to a CDN host with X-Linked-Etag / X-Linked-Size
    GET  /{repo}/resolve/{rev}/{path}, /cdn/{sha256}   the bytes (Range -> 206)
and the errors huggingface_hub turns into RepositoryNotFoundError, RevisionNotFoundError and GatedRepoError. It
never sends X-Xet-* headers, so the client downloads over plain HTTP. It counts requests and file bytes served and
can throttle each response, to make downloads slow enough to interrupt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_LFS_POINTER_SIZE = 134
_CHUNK = 64 * 1024


@dataclass
class FakeRepo:
    """A model repo at one commit. Files of `lfs_threshold` bytes or more are LFS files (served through the CDN).

    `served` replaces the bytes sent for a path while the listing still describes `files` (a corrupted transfer).
    """

    repo_id: str
    files: dict[str, bytes]
    commit: str = ""
    branches: dict[str, str] = field(default_factory=dict)
    gated: bool = False
    lfs_threshold: int = 1024
    listed_sizes: dict[str, int] = field(default_factory=dict)
    served: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Hashed once: the server answers every request with them, and hashing large files per request is slow.
        self._sha256 = {path: hashlib.sha256(data).hexdigest() for path, data in self.files.items()}
        if not self.commit:
            digest = hashlib.sha1(self.repo_id.encode())
            for path in sorted(self.files):
                digest.update(path.encode() + self._sha256[path].encode())
            self.commit = digest.hexdigest()
        self.branches.setdefault("main", self.commit)

    def resolve(self, revision: str) -> str | None:
        return revision if revision == self.commit else self.branches.get(revision)

    def is_lfs(self, path: str) -> bool:
        return len(self.files[path]) >= self.lfs_threshold

    def sha256(self, path: str) -> str:
        return self._sha256[path]

    def git_oid(self, path: str) -> str:
        content = self.files[path]
        return hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()

    def tree(self, folder: str = "", *, recursive: bool = True) -> list[dict]:
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        return [
            e
            for e in self._tree()
            if e["path"].startswith(prefix) and (recursive or "/" not in e["path"][len(prefix) :])
        ]

    def _tree(self) -> list[dict]:
        entries: list[dict] = []
        folders = sorted({"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)})
        for folder in folders:
            entries.append(
                {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
            )
        for path in sorted(self.files):
            size = self.listed_sizes.get(path, len(self.files[path]))
            entry: dict = {"type": "file", "path": path, "size": size}
            if self.is_lfs(path):
                entry["oid"] = hashlib.sha1(path.encode()).hexdigest()
                entry["lfs"] = {"oid": self.sha256(path), "size": size, "pointerSize": _LFS_POINTER_SIZE}
            else:
                entry["oid"] = self.git_oid(path)
            entries.append(entry)
        return entries


class HubStats:
    """What the server did: requests by kind ("api", "head", "get", "cdn", "other") and file bytes sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.file_bytes = 0
        self.bytes_by_path: Counter[str] = Counter()
        # the Authorization header of each request, by kind: where a token went
        self.authorization: defaultdict[str, list[str | None]] = defaultdict(list)

    def count(self, kind: str, authorization: str | None = None) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.authorization[kind].append(authorization)

    def sent(self, path: str, n: int) -> None:
        with self._lock:
            self.file_bytes += n
            self.bytes_by_path[path] += n

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


class FakeHub:
    """The server; use as a context manager. `throttle_bps` (bytes/s per response) may change while it runs."""

    def __init__(
        self, repos: list[FakeRepo] = (), *, token: str = "hf_fake_token", throttle_bps: float = 0
    ) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.token = token
        self.throttle_bps = throttle_bps
        self.stats = HubStats()
        for repo in repos:
            self.add(repo)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo: FakeRepo) -> FakeRepo:
        self.repos[repo.repo_id] = repo
        return repo

    def reset_stats(self) -> None:
        self.stats = HubStats()

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:  # noqa: PYI034 - start() returns the same object
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def blob(self, sha256: str) -> tuple[FakeRepo, str] | None:
        for repo in self.repos.values():
            for path in repo.files:
                if repo.is_lfs(path) and repo.sha256(path) == sha256:
                    return repo, path
        return None


_API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>revision|tree)/(?P<rev>[^/]+)(?:/(?P<path>.*))?")
_RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")
_CDN = re.compile(r"/cdn/(?P<sha>[0-9a-f]{64})")


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

        def _route(self, *, head: bool) -> None:
            split = urlsplit(self.path)
            path = split.path
            auth = self.headers.get("Authorization")
            if match := _API.fullmatch(path):
                hub.stats.count("api", auth)
                recursive = "recursive=true" in split.query.lower() or "recursive=1" in split.query
                self._api(
                    unquote(match["repo"]),
                    match["op"],
                    unquote(match["rev"]),
                    unquote(match["path"] or ""),
                    recursive,
                )
            elif match := _RESOLVE.fullmatch(path):
                hub.stats.count("head" if head else "get", auth)
                self._resolve(
                    unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]), head=head
                )
            elif match := _CDN.fullmatch(path):
                hub.stats.count("cdn", auth)
                found = hub.blob(match["sha"])
                if found is None:
                    self._error(404, "EntryNotFound", "blob not found")
                else:
                    self._send_file(found[0], found[1], head=head)
            else:
                # huggingface_hub's own side requests (such as its agent-harness registry) land here.
                hub.stats.count("other")
                self._error(404, None, f"no route for {path}")

        def _repo(self, repo_id: str, revision: str) -> tuple[FakeRepo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            if repo.gated:
                auth = self.headers.get("Authorization")
                if auth is None:
                    self._error(
                        401, "GatedRepo", "Access to this model is restricted; you must be authenticated"
                    )
                    return None
                if auth != f"Bearer {hub.token}":
                    self._error(
                        403, "GatedRepo", "Access to this model is restricted and you are not in the list"
                    )
                    return None
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", "Invalid rev id")
                return None
            return repo, commit

        def _api(
            self, repo_id: str, op: str, revision: str, folder: str = "", recursive: bool = True
        ) -> None:
            found = self._repo(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            if op == "revision":
                body = {
                    "id": repo.repo_id,
                    "sha": commit,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                }
            else:
                body = repo.tree(folder, recursive=recursive)
            self._send_json(body)

        def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
            found = self._repo(repo_id, revision)
            if found is None:
                return
            repo, commit = found
            if path not in repo.files:
                self._error(404, "EntryNotFound", "Entry not found", commit=commit)
                return
            if not repo.is_lfs(path):
                self._send_file(repo, path, head=head, headers={"X-Repo-Commit": commit})
                return
            # A different host name than the endpoint's, so the client treats it as a CDN and stops there.
            size = len(repo.files[path])
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{hub.port}/cdn/{repo.sha256(path)}")
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{repo.sha256(path)}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("ETag", f'"{hashlib.sha1(path.encode()).hexdigest()}"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_file(
            self, repo: FakeRepo, path: str, *, head: bool, headers: dict[str, str] | None = None
        ) -> None:
            content = repo.served.get(path, repo.files[path])
            start, end = 0, len(content)
            status = 200
            if (ranged := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))) is not None:
                start = int(ranged[1])
                end = min(int(ranged[2]) + 1, len(content)) if ranged[2] else len(content)
                status = 206
            self.send_response(status)
            self.send_header("ETag", f'"{repo.sha256(path) if repo.is_lfs(path) else repo.git_oid(path)}"')
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(content)}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if head:
                return
            began, sent = time.monotonic(), 0
            try:
                for offset in range(start, end, _CHUNK):
                    chunk = content[offset : min(offset + _CHUNK, end)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    hub.stats.sent(f"{repo.repo_id}/{path}", len(chunk))
                    if hub.throttle_bps:
                        time.sleep(max(0.0, began + sent / hub.throttle_bps - time.monotonic()))
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _send_json(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
