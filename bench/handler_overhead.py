"""The handler's own cost per job (schema, dispatch, store, result.json) against calling the pipeline directly.

Runs on the tiny SDXL model on this machine's device. Goal: at most 5 ms over the pipeline per job.

    python bench/handler_overhead.py [--runs 30] [--steps 1] [--size 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.config import Settings
from worker.intake import JobRequest
from worker.pipelines.base import JobContext, Progress
from worker.schemas import parse_job
from worker.worker import Worker


class TimedPipeline:
    """Wraps the resident pipeline so each job records how long `run` itself took."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last_run_s = 0.0

    def run(self, job, ctx):
        started = time.perf_counter()
        try:
            return self.inner.run(job, ctx)
        finally:
            self.last_run_s = time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as volume:
        settings = Settings(volume_root=Path(volume), model_profile="tiny", worker_jobs=("image",))
        worker = Worker(settings).start()
        raw = {
            "type": "image",
            "prompt": "a lighthouse",
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "seed": 1,
        }
        job = {"id": "bench", "input": raw}
        timed = TimedPipeline(worker.pipeline("image"))
        worker._pipelines["image"] = (
            timed  # the bench's only reach inside: time run() within each handled job
        )

        def direct() -> float:
            folder = worker.store.job("bench-direct")
            request = JobRequest("bench-direct", parse_job(raw))
            ctx = JobContext(request=request, folder=folder, progress=Progress(lambda _: None))
            folder.begin()
            started = time.perf_counter()
            timed.inner.run(request.job, ctx)
            return time.perf_counter() - started

        def handled(call) -> tuple[float, float]:
            started = time.perf_counter()
            result = call()
            total = time.perf_counter() - started
            assert "error" not in result, result
            return total, total - timed.last_run_s

        loop = asyncio.new_event_loop()
        paths = {
            "handle_sync": lambda: worker.handle_sync(job),
            "handle (async)": lambda: loop.run_until_complete(worker.handle(job)),
        }
        direct()
        for call in paths.values():
            handled(call)  # warm-up: first-call allocations and lazy imports
        direct_s: list[float] = []
        totals: dict[str, list[float]] = {name: [] for name in paths}
        overheads: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.runs):  # interleaved, so drift on the machine hits every path alike
            direct_s.append(direct())
            for name, call in paths.items():
                total, overhead = handled(call)
                totals[name].append(total)
                overheads[name].append(overhead)
        loop.close()

    base = statistics.median(direct_s)
    print(
        f"tiny SDXL {args.size}x{args.size}, {args.steps} step(s), {args.runs} runs each, device {worker.device}"
    )
    print(f"pipeline.run called directly: median {base * 1e3:.2f} ms")
    print(f"{'path':<16} {'median ms':>10} {'ratio':>7} {'own cost ms (median / p90)':>28}")
    for name in paths:
        own = sorted(overheads[name])
        p90 = own[int(0.9 * (len(own) - 1))]
        median = statistics.median(totals[name])
        print(
            f"{name:<16} {median * 1e3:>10.2f} {median / base:>7.3f} {statistics.median(own) * 1e3:>14.2f} / {p90 * 1e3:.2f}"
        )
    print(
        "own cost: the job's time in the handler minus its time in pipeline.run (schema, dispatch, store, "
        "result.json, thread hop); goal <= 5 ms"
    )


if __name__ == "__main__":
    main()
