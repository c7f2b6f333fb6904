"""Weight loading against the disk: seconds to load each pipeline with the worker's own loader, next to the
seconds to read the same bytes sequentially (the load-efficiency ratio; goal <= 1.2).

Both are measured cold: before each, every weight file is flushed and dropped from the page cache
(`posix_fadvise(DONTNEED)`, no root needed). A read rate far above the disk's (tens of GB/s) means the drop did
not take on this filesystem, and the ratio then compares two cached reads. Imports and CUDA start-up are done
before the clock starts. The last line printed is the figures as JSON.

    python bench/load_speed.py --model sdxl-base=DIR --model heartmula=DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 64 * 2**20


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.safetensors") if p.is_file())


def drop_from_page_cache(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read_s(files: list[Path]) -> float:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    for path in files:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(view):
                pass
    return time.perf_counter() - started


def loader(name: str, device: str) -> Callable[[Path], Any]:
    """The worker's loader of catalog model `name` (imported now, so the timing holds no imports)."""
    if name == "sdxl-base":
        from worker.pipelines.image import load_sdxl

        return lambda folder: load_sdxl(folder, device)
    if name == "heartmula":
        from worker.music.generator import MusicGenerator

        return lambda folder: MusicGenerator.from_pretrained(folder, device=device)
    raise SystemExit(f"--model {name}: expected sdxl-base or heartmula")


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(name: str, folder: Path, device: str) -> dict[str, float]:
    import torch

    load = loader(name, device)
    files = weight_files(folder)
    total = sum(p.stat().st_size for p in files)
    drop_from_page_cache(files)
    read_s = sequential_read_s(files)
    drop_from_page_cache(files)
    synchronize(device)
    started = time.perf_counter()
    model = load(folder)
    synchronize(device)
    load_s = time.perf_counter() - started
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {
        f"{name}_gib": round(total / 2**30, 2),
        f"{name}_read_s": round(read_s, 2),
        f"{name}_read_gib_s": round(total / 2**30 / read_s, 2) if read_s else 0.0,
        f"{name}_load_s": round(load_s, 2),
        f"{name}_ratio": round(load_s / read_s, 2) if read_s else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER, repeatable")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)  # CUDA context start-up is not weight loading
    figures: dict[str, float] = {}
    for item in args.model:
        name, _, folder = item.partition("=")
        result = measure(name, Path(folder), args.device)
        print(f"{name}: {result}", file=sys.stderr)
        figures.update(result)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
