"""Speed of ACE-Step 1.5 (diffusers' AceStepPipeline) as a real-time factor, for `bench/music_rtf.py --ace-step`.

`tiny` is the project's tiny random model (`cache/tiny/ace_step.py`); `3b` builds the released XL turbo's
dimensions (a 4B DiT, the Qwen3-Embedding-0.6B text encoder, the 48 kHz Oobleck VAE) with random weights, in
bfloat16 on CUDA: the speed is the real model's, the sound is noise. Text2music, 8 turbo steps, one song.

    python bench/ace_step_rtf.py [--size tiny|3b] [--device cpu|cuda] [--seconds 30] [--steps 8] [--batch 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.tiny import ace_step as tiny

# ACE-Step/acestep-v15-xl-turbo-diffusers, as its config files give them
XL_TRANSFORMER = {
    "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "in_channels": 192, "audio_acoustic_hidden_dim": 64,
    "patch_size": 2, "rope_theta": 1000000.0, "sliding_window": 128, "encoder_hidden_size": 2048,
    "is_turbo": True, "model_version": "turbo",
}  # fmt: skip
XL_CONDITION_ENCODER = {
    "hidden_size": 2048, "intermediate_size": 6144, "text_hidden_dim": 1024, "timbre_hidden_dim": 64,
    "num_lyric_encoder_hidden_layers": 8, "num_timbre_encoder_hidden_layers": 4, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000.0, "sliding_window": 128,
}  # fmt: skip
QWEN3_EMBEDDING_06B = {
    "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 32768,
}  # fmt: skip
VAE_48K = {
    "encoder_hidden_size": 128, "downsampling_ratios": [2, 4, 4, 6, 10], "channel_multiples": [1, 2, 4, 8, 16],
    "decoder_channels": 128, "decoder_input_channels": 64, "audio_channels": 2, "sampling_rate": 48000,
}  # fmt: skip
QWEN3_VOCAB = 151669  # the real embedding table, though the byte-level tokenizer here uses its first ids
LYRICS = "[Verse]\nthe tide comes in, the tide goes out\n[Chorus]\nla la la, hold on\n" * 4
TAGS = "pop, piano, female vocals, upbeat"


def build_pipeline(size: str, device: torch.device) -> Any:
    """The pipeline to time: the tiny model as the worker loads it, or the XL turbo's dimensions."""
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    if size == "tiny":
        folder = Path(tempfile.mkdtemp(prefix="ace-step-tiny-"))
        tiny.build(folder)
        pipe = AceStepPipeline.from_pretrained(folder)
    else:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        tokenizer_dir = Path(tempfile.mkdtemp(prefix="ace-step-tokenizer-"))
        vocab = tiny.write_tokenizer(tokenizer_dir)
        with torch.device(device):
            pipe = AceStepPipeline(
                vae=AutoencoderOobleck(**VAE_48K),
                text_encoder=Qwen3Model(
                    Qwen3Config(vocab_size=max(vocab, QWEN3_VOCAB), **QWEN3_EMBEDDING_06B)
                ),
                tokenizer=PreTrainedTokenizerFast.from_pretrained(tokenizer_dir),
                transformer=AceStepTransformer1DModel(**XL_TRANSFORMER),
                condition_encoder=AceStepConditionEncoder(**XL_CONDITION_ENCODER),
                scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
            )
        pipe.to(dtype=dtype)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def time_song(pipe: Any, seconds: float, steps: int, batch: int, device: torch.device) -> float:
    """Seconds for `batch` songs of `seconds`, text encoding to waveform, after a short warm-up song."""

    def song(duration: float) -> None:
        pipe(
            prompt=[TAGS] * batch,
            lyrics=[LYRICS] * batch,
            audio_duration=duration,
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=[torch.Generator("cpu").manual_seed(index) for index in range(batch)],
        )

    with torch.inference_mode():
        song(2.0)  # warm-up: kernels, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        song(seconds)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - started


def ace_step_rtf(size: str, device: torch.device, seconds: float, steps: int = 8, batch: int = 1) -> float:
    """RTF (compute seconds per second of audio made) of ACE-Step at `size`; prints its line."""
    pipe = build_pipeline(size, device)
    elapsed = time_song(pipe, seconds, steps, batch, device)
    rtf = elapsed / (seconds * batch)
    memory = (
        f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    )
    print(
        f"ACE-Step ({size}, {pipe.sample_rate} Hz, {steps} steps, batch {batch}): {batch} x {seconds:g} s in "
        f"{elapsed:.2f} s, RTF {rtf:.4f}{memory}",
        flush=True,
    )
    return rtf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    ace_step_rtf(args.size, torch.device(args.device), args.seconds, args.steps, args.batch)


if __name__ == "__main__":
    main()
