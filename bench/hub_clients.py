"""What the cache benches share: clients in their own processes against the fake Hub (tests/hub_server.py), each
timing only its calls (after its imports), and the warm and cold comparisons run side by side.

A bench script runs `print_timings` in its `--driver MODE TARGET REPEAT` mode and drives those processes through
`Clients`; MODE is "cache" (ours) or "plain" (huggingface_hub alone).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def print_timings(call: Callable[[], object], repeat: int) -> None:
    """In a client process: time `repeat` calls and print the seconds as JSON."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    print(json.dumps(timings))


class Clients:
    """Client processes of `script` against `hub`, with huggingface_hub's state under `base`."""

    def __init__(self, script: str, hub, base: Path, **extra_env: str) -> None:
        self.script = script
        self.hub = hub
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        self.env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HOME=str(base / "hf-home"),
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONPATH=str(ROOT),
            **extra_env,
        )

    def spawn(self, mode: str, target: Path, repeat: int = 1) -> subprocess.Popen[str]:
        """A client process; its stderr is this one's (a pipe nobody reads could fill and stall it)."""
        command = [sys.executable, self.script, "--driver", mode, str(target), str(repeat)]
        return subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, text=True)

    def timed(self, mode: str, target: Path, repeat: int = 1) -> tuple[list[float], int]:
        """The timings of `repeat` calls in one client process, and the requests they made."""
        self.hub.reset_stats()
        proc = self.spawn(mode, target, repeat)
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{mode} client failed (its error is above)")
        return json.loads(out), self.hub.stats.total_requests

    def warm(self, base: Path, repeat: int) -> dict[str, tuple[float, float]]:
        """Each mode's median seconds and requests per call once its folder is warm."""
        for mode, folder in (("cache", "models"), ("plain", "plain")):
            self.timed(mode, base / folder)
        figures = {}
        for mode, folder in (("cache", "models"), ("plain", "plain")):
            timings, requests = self.timed(mode, base / folder, repeat)
            figures[mode] = (statistics.median(timings), requests / repeat)
        return figures

    def cold(self, base: Path, repeat: int, size: int) -> dict[str, list[float]]:
        """Each mode's MB/s into fresh folders, unthrottled, alternating which goes first; each folder is removed
        after its run (the temp folder may be small)."""
        speeds: dict[str, list[float]] = {"cache": [], "plain": []}
        for run in range(repeat):
            for mode in ("cache", "plain") if run % 2 == 0 else ("plain", "cache"):
                (elapsed,), _ = self.timed(mode, base / f"{mode}-{run}")
                speeds[mode].append(size / elapsed / 1e6)
                shutil.rmtree(base / f"{mode}-{run}", ignore_errors=True)
        return speeds


def throughput_line(speeds: dict[str, list[float]], plain_name: str, goal: str) -> str:
    """The cold-throughput comparison as one line: medians (which move with a shared machine's load) and bests."""
    ours, plain = statistics.median(speeds["cache"]), statistics.median(speeds["plain"])
    ours_best, plain_best = max(speeds["cache"]), max(speeds["plain"])
    return (
        f"(3) cold throughput ours {ours:6.1f} MB/s (best {ours_best:.1f}) | {plain_name} {plain:6.1f} MB/s "
        f"(best {plain_best:.1f}) | ours = {ours / plain:.2f}x median, {ours_best / plain_best:.2f}x best "
        f"(goal {goal})"
    )
