"""Image families side by side: load (switch) time, denoising steps/s and seconds per image of SDXL, Z-Image-Turbo
and FLUX.2 [klein] 4B, through the worker's own loader (`worker.pipelines.family_loader.FamilyLoader`: one
family resident, the previous one freed before the next loads).

CPU, always: the tiny random-weight models of `cache/tiny` at `--size` (default 256²), each family's default
steps. GPU, when CUDA is available: every family at its real size with random weights (SDXL fp16, the others
bf16, built from the real configs and saved in the diffusers layout, then loaded from disk), at 1024², with the
VRAM the resident family holds and its peak while drawing. Without a GPU the real-size parameter counts are still
computed from the configs (on the meta device, no memory) as a check of the configs against the published sizes.

    python bench/image_families.py [--size 256] [--threads N] [--skip-gpu] [--work DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILY_NAMES = ("sdxl-base", "z-image-turbo", "flux2-klein-4b")
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def tiny_builders() -> dict[str, Callable[[Path], None]]:
    from cache.tiny import flux2, sdxl, zimage

    return {"sdxl-base": sdxl.build, "z-image-turbo": zimage.build, "flux2-klein-4b": flux2.build}


def qwen3_4b(causal: bool) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    from cache.tiny.qwen3 import QWEN3_4B

    config = Qwen3Config(**QWEN3_4B, vocab_size=151936, max_position_embeddings=40960)
    return (Qwen3ForCausalLM if causal else Qwen3Model)(config)


def real_modules(name: str) -> dict[str, Any]:
    """The family's models at their real size (random weights) on the current default device."""
    from diffusers import AutoencoderKL, AutoencoderKLFlux2, Flux2Transformer2DModel, ZImageTransformer2DModel

    from cache.tiny import flux2, zimage

    if name == "z-image-turbo":
        return {
            "transformer": ZImageTransformer2DModel(**zimage.TRANSFORMER),
            "vae": AutoencoderKL(**zimage.VAE),
            "text_encoder": qwen3_4b(causal=False),
        }
    return {
        "transformer": Flux2Transformer2DModel(**flux2.TRANSFORMER),
        "vae": AutoencoderKLFlux2(**flux2.VAE),
        "text_encoder": qwen3_4b(causal=True),
    }


def build_real(name: str, dest: Path, device: str) -> None:
    """A real-size random-weight folder in the layout the catalog fetches (the tokenizer is the tiny byte-level
    one: the real vocabulary is a download; the embedding keeps the real vocabulary size)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, ZImagePipeline

    from bench.gpu.real_size import build_sdxl
    from cache.tiny import flux2, zimage
    from cache.tiny.qwen3 import write_qwen_tokenizer

    if name == "sdxl-base":
        build_sdxl(dest, device)
        return
    tokenizer = write_qwen_tokenizer(dest / "tokenizer")
    torch.manual_seed(0)
    with torch.device(device):  # drawn on the GPU: minutes on a CPU
        modules = real_modules(name)
    if name == "z-image-turbo":
        pipe = ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**zimage.SCHEDULER), tokenizer=tokenizer, **modules
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(**flux2.SCHEDULER)
        pipe = Flux2KleinPipeline(scheduler=scheduler, tokenizer=tokenizer, is_distilled=True, **modules)
    pipe.to(torch.bfloat16).save_pretrained(dest, safe_serialization=True)


def real_parameter_counts() -> dict[str, float]:
    """Billions of parameters of each transformer family's real configs, counted on the meta device."""
    import torch

    counts = {}
    for name in FAMILY_NAMES[1:]:
        with torch.device("meta"):
            modules = real_modules(name)
        counts[name] = round(sum(p.numel() for m in modules.values() for p in m.parameters()) / 1e9, 3)
    return counts


def draw(pipe: Any, name: str, size: int, device: str) -> dict[str, float]:
    """One image at the family's defaults: denoising steps/s (from the step callbacks) and seconds per image."""
    import torch

    from worker.pipelines.image import draw_args
    from worker.pipelines.image_families import FAMILIES

    family = FAMILIES[name]
    args = draw_args(
        family,
        prompt=PROMPT,
        negative_prompt="",
        width=size,
        height=size,
        steps=family.steps,
        guidance_scale=family.guidance_scale,
    )
    stamps: list[float] = []

    def on_step(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return tensors

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    pipe(**args, generator=torch.Generator(device=device).manual_seed(1), callback_on_step_end=on_step)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    image_s = time.perf_counter() - started
    # the first step's end minus the call's start holds the text encoding: steps/s counts the steps after it
    denoise = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else len(stamps) / image_s
    figures = {"steps": family.steps, "steps_per_s": round(denoise, 3), "s_per_image": round(image_s, 3)}
    if device.startswith("cuda"):
        figures["peak_vram_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def bench(folders: dict[str, Path], size: int, device: str, label: str) -> list[dict[str, Any]]:
    """Each family made resident in turn (the previous one freed first), warmed with one image, then timed."""
    import torch

    from worker.pipelines.family_loader import FamilyLoader

    loader = FamilyLoader(lambda name: folders[name], device)
    rows = []
    for name in folders:
        resident, load_s = loader.activate(name)
        pipe = resident.pipe
        params = sum(
            p.numel()
            for m in pipe.components.values()
            if isinstance(m, torch.nn.Module)
            for p in m.parameters()
        )
        row: dict[str, Any] = {"family": name, "models": label, "device": device, "size": size}
        row |= {"params_m": round(params / 1e6, 1), "load_s": round(load_s, 3)}
        if device.startswith("cuda"):
            row["resident_vram_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        draw(pipe, name, size, device)  # warm-up: kernels, allocator, caches
        row |= draw(pipe, name, size, device)
        rows.append(row)
        del pipe, resident
    loader.release()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    columns = (
        "family",
        "models",
        "device",
        "size",
        "params_m",
        "load_s",
        "steps",
        "steps_per_s",
        "s_per_image",
    )
    extra = [c for c in ("resident_vram_gb", "peak_vram_gb") if any(c in row for row in rows)]
    header = (*columns, *extra)
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(row.get(column, "")) for column in header) for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="tiny models' image side (a multiple of 16)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (one: steady figures on a shared machine)"
    )
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="where the model folders are built")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    options = parser.parse_args()

    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    with tempfile.TemporaryDirectory(dir=options.work) as temp:
        work = Path(temp)
        tiny = {}
        for name, build in tiny_builders().items():
            tiny[name] = work / "tiny" / name
            build(tiny[name])
        rows = bench(tiny, options.size, "cpu", "tiny")
        counts = real_parameter_counts()
        if torch.cuda.is_available() and not options.skip_gpu:
            real = {}
            for name in FAMILY_NAMES:
                real[name] = work / "real" / name
                started = time.perf_counter()
                build_real(name, real[name], "cuda")
                print(f"built real-size {name} in {time.perf_counter() - started:.0f}s", flush=True)
                torch.cuda.empty_cache()
            rows += bench(real, 1024, "cuda", "real size, random")
    print(table(rows))
    print("real-size parameters (billions, from the configs):", json.dumps(counts))
    if options.json:
        options.json.write_text(json.dumps({"rows": rows, "real_params_b": counts}, indent=2))


if __name__ == "__main__":
    main()
