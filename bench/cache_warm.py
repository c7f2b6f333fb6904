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
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hub_server import FakeHub, FakeRepo

from bench.hub_clients import Clients, print_timings, throughput_line

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

    print_timings(call, repeat)


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
        clients = Clients(__file__, hub, base)
        print(f"model: {len(files)} files, {size / 1e6:.1f} MB, fake Hub at {hub.endpoint}")

        # (1) warm start: publish / download once, then time repeated calls on the warm folders.
        warm = clients.warm(base / "warm", args.repeat)
        (ours_s, ours_requests), (plain_s, plain_requests) = warm["cache"], warm["plain"]
        print(
            f"(1) warm start      ours {ours_s * 1e3:8.2f} ms, {ours_requests:.0f} requests | "
            f"snapshot_download {plain_s * 1e3:8.2f} ms, {plain_requests:.0f} requests | "
            f"ours = 1/{plain_s / ours_s:.0f} of its time (goal <= 1/20)"
        )

        # (2) concurrent cold starts, throttled so that they overlap.
        hub.throttle_bps = args.throttle_mbps * 1e6
        ratios = {}
        for mode in ("cache", "plain"):
            target = base / "concurrent" / (mode == "cache" and "models" or "plain")
            hub.reset_stats()
            started = time.perf_counter()
            procs = [clients.spawn(mode, target) for _ in range(args.workers)]
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

        # (3) cold throughput
        print(
            throughput_line(clients.cold(base / "cold", args.repeat, size), "snapshot_download", ">= 0.95x")
        )


if __name__ == "__main__":
    main()
