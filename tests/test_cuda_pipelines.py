"""The CUDA path at production size, through the worker: SDXL (fp16 variant files), LoRA training in bf16 and a LoRA
applied then removed, a music job on HeartMuLa 3B. The weights are random, built from the real configs by
bench/gpu/real_size.py (the outputs are noise; shapes, dtypes, devices and byte counts are production's).

Marked `cuda`: skipped without CUDA. bench/gpu/run.sh runs them on the GPU machine with GPU_BENCH_MODELS naming
the folders it built; without it the folders are built here (about 28 GB of disk, a minute on a GPU).
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings
from worker.worker import Worker

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bench.gpu.real_size import build

    root = os.environ.get("GPU_BENCH_MODELS")
    return build(Path(root) if root else tmp_path_factory.mktemp("real-size"), "real", "cuda")


@pytest.fixture(scope="module")
def worker(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Worker:
    settings = Settings(
        volume_root=tmp_path_factory.mktemp("volume"),
        model_profile="production",
        worker_jobs=("image", "training", "music"),
        warm_on_start=False,
        image_models=("sdxl-base",),
        music_models=("heartmula",),
    )
    worker = Worker(settings).start()
    # The random-weight folders are no catalog model: the resolver hands them over directly (the model cache's
    # own fetching and publishing is tested on the CPU).
    worker.model_path = folders.__getitem__  # type: ignore[method-assign]
    return worker


def handle(worker: Worker, job_id: str, **job: Any) -> dict[str, Any]:
    answer = worker.handle_sync({"id": job_id, "input": job})
    assert "error" not in answer, answer
    return answer


def noise_png(size: int, seed: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gpu_state(module: Any) -> dict[str, Any]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def same_state(module: Any, state: dict[str, Any]) -> bool:
    import torch

    now = module.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[key], state[key]) for key in state)


def test_sdxl_loads_its_fp16_variant_on_the_gpu(worker: Worker, folders: dict[str, Path]) -> None:
    import torch
    from safetensors import safe_open

    pipe = worker.pipeline("image").sdxl
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name)
        assert module.device.type == "cuda", name
        assert module.dtype == torch.float16, name
    assert sum(p.numel() for p in pipe.unet.parameters()) > 2.5e9  # SDXL's UNet: 2.57 B
    unet_file = folders["sdxl-base"] / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    with safe_open(str(unet_file), framework="pt") as weights:
        assert torch.equal(weights.get_tensor("conv_in.weight"), pipe.unet.conv_in.weight.cpu())


def test_image_job_at_1024(worker: Worker) -> None:
    answer = handle(worker, "cuda-image", type="image", prompt="a lighthouse at dusk", steps=2, seed=1)
    (image,) = answer["outputs"]
    assert (image["width"], image["height"]) == (1024, 1024)
    assert answer["metrics"]["steps_per_s"] > 0


def test_bf16_training_then_its_lora_applied_and_removed(worker: Worker) -> None:
    """A training job (bf16 autocast) and an image job with its LoRA leave the resident UNet bit-for-bit as loaded."""
    unet = worker.pipeline("image").sdxl.unet
    loaded = gpu_state(unet)
    images = [{"image": noise_png(512, seed), "caption": f"ohwx, photo {seed}"} for seed in range(2)]
    training = handle(
        worker,
        "cuda-training",
        type="training",
        images=images,
        resolution=512,
        steps=3,
        rank=16,
        learning_rate=0.05,
        mixed_precision="bf16",
        seed=2,
    )
    log = next(o for o in training["outputs"] if o["relpath"].endswith("train_log.csv"))
    with Path(log["path"]).open(newline="") as rows:
        losses = [float(row["loss"]) for row in csv.DictReader(rows)]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert same_state(unet, loaded), "training changed the resident UNet"

    base = {"type": "image", "prompt": "ohwx, a photo", "width": 512, "height": 512, "steps": 2, "seed": 5}
    with_lora = handle(worker, "cuda-lora", **base, loras=[{"job_id": "cuda-training", "scale": 4.0}])
    assert same_state(unet, loaded), "the LoRA was not removed after its job"
    without = handle(worker, "cuda-base", **base)
    assert with_lora["outputs"][0]["sha256"] != without["outputs"][0]["sha256"]


def test_music_job_on_the_3b_model(worker: Worker) -> None:
    import torch

    generator = worker.pipeline("music").engine("heartmula")
    assert generator.lm.dtype == torch.bfloat16 and generator.lm.device.type == "cuda"
    assert next(generator.codec.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in generator.lm.parameters()) > 3.5e9
    answer = handle(
        worker,
        "cuda-music",
        type="music",
        lyrics="[Verse]\nthe tide comes in",
        tags="piano,calm",
        duration_s=4,
        cfg_scale=1.5,
        seed=3,
        model="heartmula",
    )
    (audio,) = answer["outputs"]
    assert audio["kind"] == "audio" and audio["sample_rate"] == 48000 and audio["channels"] == 2
    assert 3.5 <= audio["duration_s"] <= 4.2  # the special ids have zero logits: the song runs its length
    assert answer["metrics"]["frames"] >= 48 and answer["metrics"]["rtf"] > 0
