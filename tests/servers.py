"""Real servers for the integration tests, started as processes on free loopback ports and always stopped.

Each helper is a context manager: it starts the process, polls until it answers (failing early, with the log's
tail, when it dies), yields, and terminates it (then kills it) on the way out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: Path = ROOT,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._log_handle = self.log.open("wb")
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            list(argv), cwd=cwd, env=full_env, stdout=self._log_handle, stderr=subprocess.STDOUT
        )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log_handle.close()
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def running(server: ServerProcess, ready: Callable[[], bool], timeout_s: float) -> Iterator[ServerProcess]:
    try:
        server.wait_ready(ready, timeout_s)
        yield server
    finally:
        server.stop()


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=1).status_code < 500


@contextlib.contextmanager
def gateway(env: Mapping[str, str]) -> Iterator[str]:
    """`python -m worker.gateway` on a free port; yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "worker.gateway", "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running(ServerProcess("gateway", argv, env), http_ok(f"{url}/health"), 30):
        yield url


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Debian's `redis-server` without persistence; yields its URL. Skips when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    with running(ServerProcess("redis", argv, None), ready, 20):
        yield f"redis://127.0.0.1:{port}"


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 in server mode; yields its endpoint URL."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running(ServerProcess("moto", argv, None), http_ok(f"{url}/moto-api/"), 60):
        yield url


@contextlib.contextmanager
def local_api_server(env: Mapping[str, str]) -> Iterator[str]:
    """`python handler.py --rp_serve_api` (RunPod's local development API) on a free port; yields its URL."""
    port = free_port()
    argv = [
        sys.executable,
        "handler.py",
        "--rp_serve_api",
        "--rp_api_host",
        "127.0.0.1",
        "--rp_api_port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with running(ServerProcess("local-api", argv, env), http_ok(f"{url}/openapi.json"), 300):
        yield url


@contextlib.contextmanager
def celery_worker(env: Mapping[str, str], app: str = "worker_client.celery_tasks") -> Iterator[ServerProcess]:
    """A Celery worker process (prefork, one child) for `app`; ready once it answers a ping."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--hostname",
        f"test-{os.getpid()}@%h",
    ]
    server = ServerProcess("celery", argv, env, stop_signal=signal.SIGQUIT)  # cold shutdown: nothing to finish
    with running(server, lambda: "ready." in server.log.read_text(errors="replace"), 60):
        yield server
