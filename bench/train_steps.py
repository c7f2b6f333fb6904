"""LoRA training speed and peak memory of the worker's trainer (`worker.training`), per configuration.

CPU, always: the tiny SDXL at 256² (`--tiny-resolution`), batch 1, rank 16, side by side: kohya's layer set
(the job's default) against the attention projections only, with cached latents and without (the VAE then
encodes the batch every step), and a bucketed run on portrait, landscape and square images of the same area
(batches drawn per bucket, as a job does). GPU, when CUDA is available: the SDXL-sized UNet (2.6 B parameters,
random weights, fp16 resident as in the worker) at 1024², batch 1, bf16 autocast, kohya's layers (the job's
default), gradient checkpointing on and off.

Each configuration runs in a process of its own, so the peak memory it reports is its own: host peak RSS (and
how far training took it above the loaded pipeline), and on the GPU torch's peak allocation during training.

    python bench/train_steps.py [--steps 20] [--warmup 2] [--threads N] [--tiny-resolution 256] [--skip-gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the real SDXL configs live in one place, beside the GPU run that builds them at full size
from bench.gpu.real_size import SDXL_UNET, SDXL_VAE


def sdxl_sized_pipeline(device: str) -> Any:
    """An SDXL pipeline with the real UNet and VAE shapes and random weights, fp16 on the device as the worker
    keeps it. The text encoders have one layer each but SDXL's widths (768 and 1280, pooled 1280): they run once
    (captions are cached) and only their output widths reach the UNet."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cache.tiny.sdxl import SCHEDULER, write_clip_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="sdxl-sized-"))
    vocab = write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = {
        "vocab_size": vocab,
        "num_hidden_layers": 1,
        "max_position_embeddings": 77,
        "bos_token_id": vocab - 2,
    }
    text.update(eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    with torch.device(device):  # initialise on the device: 2.6 B random parameters are slow to draw on a CPU
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        encoder = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **text)
        )
        encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_attention_heads=20, projection_dim=1280, **text
            )
        )
    scheduler = EulerDiscreteScheduler(**SCHEDULER)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    return pipe.to(device, torch.float16)


def tiny_pipeline() -> Any:
    from cache.tiny.sdxl import build
    from worker.pipelines.image import load_sdxl

    folder = Path(tempfile.mkdtemp(prefix="sdxl-tiny-"))
    build(folder)
    return load_sdxl(folder, "cpu")


def random_examples(count: int, size: int, shapes: str = "square") -> list[Any]:
    """`count` random photos of about `size`² pixels: all square, or ("mixed") 3:4, 4:3, 9:16 and square in turn."""
    import numpy as np
    from PIL import Image

    from worker.training.data import Example

    ratios = [1.0] if shapes == "square" else [3 / 4, 4 / 3, 9 / 16, 1.0]
    rng = np.random.default_rng(0)
    examples = []
    for i in range(count):
        ratio = ratios[i % len(ratios)]
        width, height = round(size * ratio**0.5), round(size / ratio**0.5)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        examples.append(Example.of(f"{i}", Image.fromarray(pixels), f"ohwx, photo {i}"))
    return examples


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """Load, cache, warm up, then time `steps` training steps of one configuration."""
    import torch

    from worker.training.buckets import BucketSampler
    from worker.training.data import TrainingData
    from worker.training.trainer import LoraTrainer, TrainSettings, resolve_targets

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    gpu = config["model"] == "sdxl"
    pipe = sdxl_sized_pipeline("cuda") if gpu else tiny_pipeline()
    loaded_rss = peak_rss_mb()
    if gpu:
        torch.cuda.synchronize()
        loaded_gpu = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    unet_targets, text_targets = resolve_targets(config["targets"])
    settings = TrainSettings(
        unet_targets=unet_targets,
        text_targets=text_targets,
        rank=16,
        alpha=16.0,
        steps=config["warmup"] + config["steps"],
        learning_rate=1e-4,
        lr_scheduler="constant",
        warmup_steps=0,
        batch_size=1,
        train_text_encoder=False,
        mixed_precision="bf16" if gpu else "no",
        gradient_checkpointing=config["gradient_checkpointing"],
        caption_dropout=0.0,
        seed=0,
    )
    size = config["resolution"]
    with LoraTrainer(pipe, settings) as trainer:
        started = time.perf_counter()
        data = TrainingData(
            pipe,
            random_examples(4, size, config["shapes"]),
            size,
            cache_latents=config["cache_latents"],
            cache_text=True,
            seed=0,
        )
        cache_s = time.perf_counter() - started
        lora_params = sum(param.numel() for param in trainer.params)
        batches = iter(BucketSampler(data.buckets, 1, seed=0))
        timings = []
        for _ in range(settings.steps):
            if gpu:
                torch.cuda.synchronize()
            started = time.perf_counter()
            trainer.step(data.batch(next(batches), [False]))
            if gpu:
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        data.release()
    timed = timings[config["warmup"] :]
    result = {
        **config,
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "cache_s": round(cache_s, 3),
        "lora_params": lora_params,
        "buckets": sorted({f"{w}x{h}" for w, h in data.buckets}),
        "steps_per_s": round(len(timed) / sum(timed), 3),
        "s_per_step": round(sum(timed) / len(timed), 4),
        "peak_rss_mb": round(peak_rss_mb()),
        "training_rss_mb": round(peak_rss_mb() - loaded_rss),
    }
    if gpu:
        result["loaded_gpu_mb"] = round(loaded_gpu)
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration in a fresh interpreter; its last stdout line is the JSON result."""
    command = [sys.executable, __file__, "--one", json.dumps(config)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    if done.returncode != 0:
        return {**config, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    base = {"steps": args.steps, "warmup": args.warmup, "threads": args.threads, "shapes": "square"}
    tiny = {**base, "model": "tiny", "resolution": args.tiny_resolution, "gradient_checkpointing": False}
    # the job's default (kohya's layers, square, cached) last of its kind: a reader keyed on latents and
    # checkpointing alone (bench/gpu/gpu_report.py) gets the default's figures
    configs = [
        {**tiny, "targets": "attention", "cache_latents": True},
        {**tiny, "targets": "kohya", "cache_latents": True, "shapes": "mixed"},
        {**tiny, "targets": "kohya", "cache_latents": False},
        {**tiny, "targets": "kohya", "cache_latents": True},
    ]
    configs = {"all": configs, "default": configs[-1:], "none": []}[args.tiny]
    if torch.cuda.is_available() and not args.skip_gpu:
        sdxl = {**base, "model": "sdxl", "resolution": 1024, "cache_latents": True, "targets": "kohya"}
        configs += [{**sdxl, "gradient_checkpointing": ckpt} for ckpt in (True, False)]
    else:
        print("no CUDA device: the SDXL-sized GPU figures are skipped", file=sys.stderr)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--tiny-resolution", type=int, default=256, help="training size of the tiny CPU runs")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument(
        "--tiny",
        choices=("all", "default", "none"),
        default="all",
        help="which tiny CPU configurations: all side by side, the job's default only, or none (a GPU run)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(json.loads(args.one))))
        return
    # the first ten columns as they always were (bench/gpu/gpu_report.py reads them), the new ones after
    header = (
        f"{'model':<6} {'res':>5} {'latents':<8} {'ckpt':<5} {'steps/s':>8} {'s/step':>8} {'cache s':>8} "
    )
    header += f"{'peak RSS MB':>12} {'train RSS MB':>13} {'peak GPU MB':>12}  {'layers':<9} {'images':<7} "
    header += f"{'LoRA M':>7}  device, buckets"
    print(header)
    for config in configurations(args):
        result = run_child(config)
        if "error" in result:
            print(f"{config['model']:<6} {config['resolution']:>5} failed: {result['error']}")
            continue
        print(
            f"{result['model']:<6} {result['resolution']:>5} "
            f"{'cached' if result['cache_latents'] else 'per step':<8} "
            f"{'on' if result['gradient_checkpointing'] else 'off':<5} {result['steps_per_s']:>8} "
            f"{result['s_per_step']:>8} {result['cache_s']:>8} {result['peak_rss_mb']:>12} "
            f"{result['training_rss_mb']:>13} {result.get('peak_gpu_mb', '-'):>12}  {result['targets']:<9} "
            f"{result['shapes']:<7} {result['lora_params'] / 1e6:>7.2f}  {result['device']}, "
            f"{' '.join(result['buckets'])}"
        )


if __name__ == "__main__":
    main()
