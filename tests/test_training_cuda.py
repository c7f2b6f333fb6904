"""The trainer's CUDA-only paths on the tiny SDXL (fp16 resident, bf16 autocast): kohya's layers with min-SNR and
noise offset, the resume state round trip with a CUDA noise generator, and bitsandbytes' AdamW8bit with its
state saved and restored. Marked `cuda`: skipped without CUDA (bench/gpu/run.sh runs the cuda tests)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from worker.training.trainer import LoraTrainer, TrainSettings

pytestmark = pytest.mark.cuda


def settings(optimizer: str = "adamw", steps: int = 4) -> TrainSettings:
    return TrainSettings(
        rank=4,
        alpha=4.0,
        steps=steps,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_steps=0,
        batch_size=1,
        train_text_encoder=False,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        caption_dropout=0.0,
        seed=7,
        min_snr_gamma=5.0,
        noise_offset=0.05,
        optimizer=optimizer,
    )


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir: Path) -> Any:
    from worker.pipelines.image import load_sdxl

    return load_sdxl(tiny_sdxl_dir, "cuda")


def batches(pipe: Any) -> Any:
    from PIL import Image

    from worker.training.data import Example, TrainingData

    examples = [Example.of("a", Image.new("RGB", (64, 96), (200, 20, 20)), "ohwx, a red bar")]
    return TrainingData(pipe, examples, 64, cache_latents=True, cache_text=True, seed=0)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_resume_state_round_trip_on_cuda(pipe: Any, tmp_path: Path, optimizer: str) -> None:
    from worker.training.resume import Identity, apply_state, load_state, save_state

    if optimizer == "adamw8bit":
        pytest.importorskip("bitsandbytes")
    data = batches(pipe)
    run = settings(optimizer)
    identity = Identity("sdxl-tiny", 4, 4.0, run.unet_targets, run.text_targets, False, optimizer)
    with LoraTrainer(pipe, run) as trainer:
        assert trainer.autocast_dtype is not None
        losses = [trainer.step(data.batch([0], [False])) for _ in range(2)]
        save_state(tmp_path / "s.state.safetensors", trainer, identity, 2, [(loss, 1e-3) for loss in losses])
        straight = [trainer.step(data.batch([0], [False])) for _ in range(2)]
        name = type(trainer.optimizer).__name__
    state = load_state(tmp_path / "s.state.safetensors")
    with LoraTrainer(pipe, settings(optimizer)) as trainer:
        apply_state(state, trainer)
        resumed = [trainer.step(data.batch([0], [False])) for _ in range(2)]
    data.release()
    assert name == ("AdamW8bit" if optimizer == "adamw8bit" else "AdamW")
    assert all(math.isfinite(loss) and loss > 0 for loss in losses + straight)
    assert resumed == pytest.approx(straight, rel=1e-3)
