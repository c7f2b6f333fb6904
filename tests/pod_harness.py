"""The pod server as the tests run it: a Worker on the tiny models, its PodQueue and the ASGI app served by
uvicorn on a free loopback port in a background thread (the same objects `handler.py --pod` builds)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from worker.config import Settings
from worker.pod.api import create_app
from worker.pod.job_queue import PodQueue
from worker.worker import Worker

POD_KEY = "pod-test-key"


@dataclass
class RunningPod:
    url: str
    queue: PodQueue
    worker: Worker
    settings: Settings

    @property
    def job_data(self) -> Path:
        return self.worker.store.root

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {POD_KEY}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_pod(
    volume: Path, job_data: Path, jobs: tuple[str, ...], *, warm: bool = True
) -> Iterator[RunningPod]:
    settings = Settings(
        volume_root=volume,
        job_data_dir=job_data,
        model_profile="tiny",
        worker_jobs=jobs,
        warm_on_start=warm,
        progress_interval_s=0.0,
        pod_api_key=POD_KEY,
    )
    queue = PodQueue(settings)
    worker = Worker(settings, progress_sink=queue.on_progress).start()
    queue.bind(worker)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(queue, POD_KEY), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="pod-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the pod server did not start"
        time.sleep(0.05)
    try:
        yield RunningPod(f"http://127.0.0.1:{port}", queue, worker, settings)
    finally:
        server.should_exit = True
        thread.join(10)
        queue.stop()
