"""SDXL text-to-image speed: seconds per image and peak GPU memory, eager or with the UNet compiled.

Loads a diffusers folder with the worker's loader (`load_sdxl`: fp16 on CUDA), the tiny model when none is given.
One untimed image first (kernels, allocator, and the compilation when `--compile` is set, reported as
`warmup_s`), then `--images` timed images of `--steps` steps at `--size`², CFG on as in the worker's default job.
The last line printed is the figures as JSON.

    python bench/image_speed.py [--model-dir DIR] [--device cuda] [--size 1024] [--steps 30]
        [--compile {none,default,max-autotune-no-cudagraphs,reduce-overhead}] [--backend inductor]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def load(model_dir: Path | None, device: str) -> Any:
    from worker.pipelines.image import load_sdxl

    if model_dir is None:
        from cache.tiny.sdxl import build

        model_dir = Path(tempfile.mkdtemp(prefix="sdxl-tiny-"))
        build(model_dir)
    return load_sdxl(model_dir, device)


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate(pipe: Any, size: int, steps: int, device: str) -> float:
    import torch

    synchronize(device)
    started = time.perf_counter()
    pipe(
        prompt=PROMPT,
        width=size,
        height=size,
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=1, help="timed images")
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "default", "max-autotune-no-cudagraphs", "reduce-overhead"],
        help="torch.compile mode of the UNet",
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager for a smoke)")
    args = parser.parse_args()
    import torch

    pipe = load(args.model_dir, args.device)
    if args.compile != "none":
        mode = None if args.compile == "default" else args.compile
        pipe.unet = torch.compile(pipe.unet, mode=mode, backend=args.backend)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # The warm-up runs the timed shape: the compiled UNet then needs no recompilation in the timed runs.
    warmup_s = generate(pipe, args.size, args.steps, args.device)
    timed = [generate(pipe, args.size, args.steps, args.device) for _ in range(args.images)]
    figures: dict[str, Any] = {
        "compile": args.compile,
        "s_per_image": round(sum(timed) / len(timed), 3),
        "steps_per_s": round(args.steps * len(timed) / sum(timed), 2),
        "warmup_s": round(warmup_s, 1),
    }
    if args.device.startswith("cuda"):
        figures["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        figures["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
