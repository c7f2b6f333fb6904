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
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.config import Settings
from worker.pipelines.base import JobContext, Progress
from worker.schemas import parse_job
from worker.worker import Worker


def timed(fn, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as volume:
        settings = Settings(volume_root=Path(volume), model_profile="tiny", worker_jobs=("image",))
        worker = Worker(settings).start()
        raw = {"type": "image", "prompt": "a lighthouse", "width": args.size, "height": args.size,
               "steps": args.steps, "seed": 1}
        job = {"id": "bench", "input": raw}
        pipeline = worker.pipeline("image")

        def direct() -> None:
            folder = worker.store.job("bench-direct")
            ctx = JobContext(job_id="bench-direct", folder=folder, progress=Progress(lambda _: None))
            folder.begin()
            pipeline.run(parse_job(raw), ctx)

        def through_handler() -> None:
            result = worker.handle_sync(job)
            assert "error" not in result, result

        async def through_async_handler() -> None:
            await worker.handle(job)

        loop = asyncio.new_event_loop()
        for fn in (direct, through_handler):
            fn()  # warm-up: first-call allocations and lazy imports
        rounds = {"direct": [], "handle_sync": [], "handle (async)": []}
        for _ in range(args.runs):  # interleaved, so drift on the machine hits all three alike
            rounds["direct"] += timed(direct, 1)
            rounds["handle_sync"] += timed(through_handler, 1)
            rounds["handle (async)"] += timed(lambda: loop.run_until_complete(through_async_handler()), 1)
        loop.close()

    base = statistics.median(rounds["direct"])
    print(f"tiny SDXL {args.size}x{args.size}, {args.steps} step(s), {args.runs} runs each, "
          f"device {worker.device}, {threading.active_count()} threads")
    print(f"{'path':<16} {'median ms':>10} {'overhead ms':>12} {'ratio':>7}")
    for name, samples in rounds.items():
        median = statistics.median(samples)
        print(f"{name:<16} {median * 1e3:>10.2f} {(median - base) * 1e3:>12.2f} {median / base:>7.3f}")
    print("goal: overhead <= 5 ms per job")


if __name__ == "__main__":
    main()
