"""The model cache against plain `snapshot_download`, side by side in one run, on the fake Hub (tests/hub_server.py).

    python bench/cache_warm.py [--size-mb 128] [--workers 8] [--repeat 3] [--throttle-mbps 40]

(1) warm start: `ModelCache.ensure` of a published model vs a second `snapshot_download(local_dir=...)` of the same
    model (goal: ours at most 1/20 of its time, with 0 requests);
(2) N concurrent cold starts on one volume: bytes served / model size (goal 1.0), against N plain
    `snapshot_download`s into one local_dir; each response is throttled so the downloads overlap as on a network;
(3) cold download throughput, unthrottled, against plain `snapshot_download` (goal at least 0.95x).

Clients run in their own processes (the server keeps this one) and time only the call, after their imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hub_server import FakeHub, FakeRepo

REPO_ID = "bench/model"


def driver(mode: str, target: str, repeat: int) -> None:
    """Run in a client process: import everything first, then time `repeat` calls and print the timings."""
    from huggingface_hub import snapshot_download

    from cache import ModelCache, ModelSpec, Part

    if mode == "cache":
        import filelock  # noqa: F401 - imported before timing, like huggingface_hub

        cache = ModelCache(Path(target), lease_s=30)
        spec = ModelSpec("bench", parts=(Part(kind="hub", repo_id=REPO_ID),))

        def call() -> None:
            cache.ensure(spec, timeout=600)
    else:

        def call() -> None:
            snapshot_download(REPO_ID, local_dir=target)

    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    print(json.dumps(timings))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=128, help="model size (4 shards plus small files)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent cold starts in (2)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="repetitions of (1) and (3); the median is shown"
    )
    parser.add_argument("--throttle-mbps", type=float, default=40, help="per-response throttle in (2), MB/s")
    parser.add_argument("--driver", nargs=3, metavar=("MODE", "TARGET", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver[0], args.driver[1], int(args.driver[2]))
        return

    shard = args.size_mb * 1_000_000 // 4
    files = {f"model-{i:05d}-of-00004.safetensors": os.urandom(shard) for i in range(1, 5)}
    files.update({"config.json": b'{"bench": true}', "tokenizer.json": b"{}" * 5000, "README.md": b"bench\n"})
    repo = FakeRepo(REPO_ID, files)
    size = sum(len(data) for data in files.values())
    with FakeHub([repo]) as hub, tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(base / "hf-home"),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONPATH=str(ROOT),
        )

        def spawn(mode: str, target: Path, repeat: int = 1) -> subprocess.Popen[str]:
            command = [sys.executable, __file__, "--driver", mode, str(target), str(repeat)]
            return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)

        def timed(mode: str, target: Path, repeat: int = 1) -> tuple[list[float], int]:
            """Timings of `repeat` calls in one client process, and the requests they made."""
            hub.reset_stats()
            proc = spawn(mode, target, repeat)
            out, _ = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"{mode} client failed")
            return json.loads(out), hub.stats.total_requests

        print(f"model: {len(files)} files, {size / 1e6:.1f} MB, fake Hub at {hub.endpoint}")

        # (1) warm start: publish / download once, then time repeated calls on the warm folders.
        timed("cache", base / "warm" / "models")
        timed("plain", base / "warm" / "plain")
        ours, ours_requests = timed("cache", base / "warm" / "models", args.repeat)
        plain, plain_requests = timed("plain", base / "warm" / "plain", args.repeat)
        ours_s, plain_s = statistics.median(ours), statistics.median(plain)
        print(
            f"(1) warm start      ours {ours_s * 1e3:8.2f} ms, {ours_requests / args.repeat:.0f} requests | "
            f"snapshot_download {plain_s * 1e3:8.2f} ms, {plain_requests / args.repeat:.0f} requests | "
            f"ours = 1/{plain_s / ours_s:.0f} of its time (goal <= 1/20)"
        )

        # (2) concurrent cold starts, throttled so that they overlap.
        hub.throttle_bps = args.throttle_mbps * 1e6
        ratios = {}
        for mode in ("cache", "plain"):
            target = base / "concurrent" / (mode == "cache" and "models" or "plain")
            hub.reset_stats()
            started = time.perf_counter()
            procs = [spawn(mode, target) for _ in range(args.workers)]
            failed = sum(p.wait() != 0 for p in procs)
            ratios[mode] = (hub.stats.file_bytes / size, time.perf_counter() - started, failed)
        hub.throttle_bps = 0
        (ours_ratio, ours_wall, ours_failed), (plain_ratio, plain_wall, plain_failed) = (
            ratios["cache"],
            ratios["plain"],
        )
        print(
            f"(2) {args.workers} cold starts  ours {ours_ratio:5.2f}x model bytes in {ours_wall:5.1f}s "
            f"({ours_failed} failed) | snapshot_download {plain_ratio:5.2f}x in {plain_wall:5.1f}s "
            f"({plain_failed} failed) | goal 1.0x"
        )

        # (3) cold throughput: fresh folders, unthrottled, alternating which goes first.
        speeds: dict[str, list[float]] = {"cache": [], "plain": []}
        for run in range(args.repeat):
            for mode in ("cache", "plain") if run % 2 == 0 else ("plain", "cache"):
                (elapsed,), _ = timed(mode, base / "cold" / f"{mode}-{run}")
                speeds[mode].append(size / elapsed / 1e6)
        # On a shared machine the median moves with the neighbours' load; the best run shows the intrinsic speed.
        ours_speed, plain_speed = statistics.median(speeds["cache"]), statistics.median(speeds["plain"])
        ours_best, plain_best = max(speeds["cache"]), max(speeds["plain"])
        print(
            f"(3) cold throughput ours {ours_speed:6.1f} MB/s (best {ours_best:.1f}) | snapshot_download "
            f"{plain_speed:6.1f} MB/s (best {plain_best:.1f}) | ours = {ours_speed / plain_speed:.2f}x median, "
            f"{ours_best / plain_best:.2f}x best (goal >= 0.95x)"
        )


if __name__ == "__main__":
    main()
