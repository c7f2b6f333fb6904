"""Model references (`hf:<owner>/<repo>/<file>.safetensors`) against plain `hf_hub_download`, on the fake Hub
(tests/hub_server.py), each client in its own process, timing only the call (after its imports).

    python bench/cache_refs.py [--size-mb 256] [--repeat 5] [--kills 3]

(1) warm resolution: `ModelCache.fetch` of a published reference vs a second `hf_hub_download` of the same file
    (requests made and time; goal: 0 requests);
(2) takeover: the holder SIGKILLed once mid-file, a second worker finishes: bytes served / file size (goal <= 1.05),
    beside the same for a catalog-style repo model (`ensure`, snapshot_download underneath);
(3) cold single-file throughput, unthrottled: ours vs `hf_hub_download` (goal >= 1.0x).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cache_fixtures import sdxl_checkpoint_bytes
from hub_server import FakeHub, FakeRepo

from bench.hub_clients import Clients, print_timings, throughput_line

REPO_ID = "bench/ckpt"
FILE = "model.safetensors"
REF = f"hf:{REPO_ID}/{FILE}"


def driver(mode: str, target: str, repeat: int) -> None:
    """In a client process: import first, then time `repeat` calls and print the timings as JSON."""
    from huggingface_hub import hf_hub_download

    from cache import ModelCache
    from cache.cache_settings import CacheSettings

    if mode == "cache":
        import filelock  # noqa: F401 - imported before timing, like huggingface_hub
        import requests  # noqa: F401

        cache = ModelCache.from_settings(Path(target), CacheSettings.from_env())

        def call() -> None:
            cache.fetch(REF, timeout=600)
    else:

        def call() -> None:
            hf_hub_download(REPO_ID, FILE, cache_dir=target)

    print_timings(call, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=256, help="the single file's size")
    parser.add_argument(
        "--repeat", type=int, default=5, help="repetitions of (1) and (3); the median is shown"
    )
    parser.add_argument("--kills", type=int, default=3, help="takeovers measured in (2)")
    parser.add_argument("--driver", nargs=3, metavar=("MODE", "TARGET", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.driver[0], args.driver[1], int(args.driver[2]))
        return

    content = sdxl_checkpoint_bytes(args.size_mb * 1_000_000, seed=1)
    size = len(content)
    shards = {f"model-{i:05d}-of-00004.safetensors": os.urandom(size // 4) for i in range(1, 5)}
    repos = [FakeRepo(REPO_ID, {FILE: content, "README.md": b"bench\n"}), FakeRepo("bench/repo", shards)]
    with FakeHub(repos) as hub, tempfile.TemporaryDirectory(prefix="cache-refs-bench-") as tmp:
        base = Path(tmp)
        clients = Clients(
            __file__,
            hub,
            base,
            ALLOW_PRIVATE_URLS="true",
            RUNPOD_HF_CACHE_DIR=str(base / "no-runpod-cache"),
            BAKED_MODELS_DIR=str(base / "no-baked-models"),
        )
        env = clients.env
        print(f"file: {size / 1e6:.1f} MB; fake Hub at {hub.endpoint}")

        # (1) warm resolution
        warm = clients.warm(base / "warm", args.repeat)
        (ours_s, ours_requests), (plain_s, plain_requests) = warm["cache"], warm["plain"]
        print(
            f"(1) warm resolution ours {ours_s * 1e3:7.2f} ms, {ours_requests:.0f} requests | "
            f"hf_hub_download {plain_s * 1e3:7.2f} ms, {plain_requests:.0f} requests | "
            f"ours = 1/{plain_s / ours_s:.0f} of its time"
        )

        # (2) takeover after a SIGKILL mid-file
        for label, command, total in (
            ("reference", ["fetch", REF], size),
            ("catalog-style repo", ["ensure", "bench/repo"], sum(len(d) for d in shards.values())),
        ):
            ratios = []
            for run in range(args.kills):
                volume = base / "takeover" / f"{label.split()[0]}-{run}"
                cli = [sys.executable, "-m", "cache", *command, "--lease-s", "5"]
                run_env = {**env, "VOLUME_ROOT": str(volume), "LOG_LEVEL": "WARNING"}
                hub.reset_stats()
                hub.throttle_bps = total / 4  # about 4 s for the whole file: the kill lands mid-file
                holder = subprocess.Popen(
                    cli, env=run_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                while hub.stats.file_bytes < total * (0.3 + 0.4 * run / max(args.kills - 1, 1)):
                    time.sleep(0.01)
                holder.send_signal(signal.SIGKILL)
                holder.wait()
                hub.throttle_bps = 0
                taker = subprocess.run(
                    cli, env=run_env, cwd=ROOT, capture_output=True, text=True, check=False
                )
                if taker.returncode:
                    raise SystemExit(f"takeover failed: {taker.stderr[-2000:]}")
                ratios.append(hub.stats.file_bytes / total)
            print(
                f"(2) takeover {label:<19} bytes fetched / size: mean {statistics.mean(ratios):.3f}, "
                f"max {max(ratios):.3f} over {args.kills} kills (goal <= 1.05 for references)"
            )

        # (3) cold throughput
        print(throughput_line(clients.cold(base / "cold", args.repeat, size), "hf_hub_download", ">= 1.0x"))


if __name__ == "__main__":
    main()
