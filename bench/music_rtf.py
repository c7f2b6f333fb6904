"""Speed of the native HeartMuLa LM and HeartCodec, as frames/s and real-time factor (RTF).

Builds the models from their dimensions with random weights (no download): `--size tiny` is the test
checkpoint's size, `--size 3b` the released HeartMuLa-oss-3B (LM bf16 on CUDA) with the real HeartCodec.
The LM and the codec are timed separately on one song of `--seconds`; 12.5 frames/s is real time, so
RTF = 12.5 / (frames/s), and RTF < 1 is faster than real time. Goal for 3B on one H100: combined RTF <= 0.5.

    python bench/music_rtf.py [--size tiny|3b] [--device cpu|cuda] [--seconds 30] [--cfg 1.5] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.tiny import heartmula as tiny
from worker.music.codec import HeartCodec, onednn_disabled
from worker.music.config import FLAVORS, CodecConfig, LMConfig, TransformerConfig
from worker.music.lm import HeartMuLa
from worker.music.sampler import TopKSampler, generator_exponential
from worker.music.tokenizer import TEXT_SLOT, Prompt

FRAME_RATE_HZ = 12.5
PROMPT_TOKENS = 300  # tags + lyrics of a typical song


def configs(size: str) -> tuple[LMConfig, CodecConfig]:
    if size == "tiny":
        lm = LMConfig(
            backbone=TransformerConfig.from_builder_args(tiny.BACKBONE),
            decoder=TransformerConfig.from_builder_args(tiny.DECODER),
            text_vocab_size=tiny.TEXT_VOCAB,
            audio_vocab_size=tiny.AUDIO_VOCAB,
        )
        return lm, CodecConfig.from_dict(tiny.CODEC)
    return LMConfig(backbone=FLAVORS["llama-3B"], decoder=FLAVORS["llama-300M"]), CodecConfig()


def random_prompt(cfg: LMConfig, length: int, generator: torch.Generator) -> Prompt:
    tokens = torch.zeros(length, TEXT_SLOT + 1, dtype=torch.long)
    tokens[:, TEXT_SLOT] = torch.randint(cfg.text_vocab_size, (length,), generator=generator)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, TEXT_SLOT] = True
    return Prompt(tokens, mask, muq_idx=length // 10, tags_ids=[], lyrics_ids=[])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_lm(lm: HeartMuLa, frames: int, cfg_scale: float, device: torch.device) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    prompt = random_prompt(lm.cfg, PROMPT_TOKENS, torch.Generator().manual_seed(0))
    sampler = TopKSampler(50, 1.0, generator_exponential(generator))

    def run(n_steps: int) -> float:
        synchronize(device)
        started = time.perf_counter()
        # stop_id past the vocabulary: random weights must not end the song early
        lm.generate(
            prompt,
            n_steps=n_steps,
            cfg_scale=cfg_scale,
            sampler=sampler,
            stop_id=lm.cfg.audio_vocab_size,
            empty_id=0,
            eos_check_every=16 if device.type == "cuda" else 1,
        )
        synchronize(device)
        return time.perf_counter() - started

    run(8)  # warm-up: kernels, allocator, compilation
    return run(frames - 1)


def time_codec(codec: HeartCodec, frames: int, steps: int, device: torch.device) -> tuple[float, int]:
    generator = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(codec.cfg.codebook_size, (8, frames), generator=torch.Generator().manual_seed(0))

    def noise(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device)

    with onednn_disabled() if device.type == "cpu" else nullcontext():
        codec.detokenize(codes[:, :8], noise=noise, steps=1)  # warm-up: one window, one step
        synchronize(device)
        started = time.perf_counter()
        codec.detokenize(codes, noise=noise, steps=steps)
        synchronize(device)
    return time.perf_counter() - started, codec.plan(frames, reference_quirks=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=30.0, help="song length to generate and decode")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--codec-steps", type=int, default=10)
    parser.add_argument("--part", choices=["lm", "codec", "both"], default="both")
    parser.add_argument("--compile", action="store_true", help="torch.compile the LM transformers")
    args = parser.parse_args()

    device = torch.device(args.device)
    lm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm_cfg, codec_cfg = configs(args.size)
    frames = int(args.seconds * FRAME_RATE_HZ)
    audio_s = frames / FRAME_RATE_HZ
    torch.manual_seed(0)
    print(
        f"size={args.size} device={device} ({torch.get_num_threads()} CPU threads) lm={lm_dtype} "
        "codec=float32 "
        f"song={audio_s:g} s ({frames} frames) cfg={args.cfg} codec_steps={args.codec_steps}"
        f"{' compile' if args.compile else ''}"
    )

    lm_s = codec_s = 0.0
    if args.part in ("lm", "both"):
        with torch.device(device):
            lm = HeartMuLa(lm_cfg)
        lm.to(lm_dtype).rebuild_buffers()  # RoPE tables stay float32
        lm.eval()
        if args.compile:
            lm.compile_transformers()
        lm_s = time_lm(lm, frames, args.cfg, device)
        print(
            f"LM    : {frames} frames in {lm_s:.2f} s = {frames / lm_s:.1f} frames/s, "
            f"RTF {lm_s / audio_s:.3f}"
        )
        del lm
    if args.part in ("codec", "both"):
        with torch.device(device):
            codec = HeartCodec(codec_cfg).eval()
        codec_s, windows = time_codec(codec, frames, args.codec_steps, device)
        print(
            f"codec : {frames} frames ({windows} windows of 29.76 s) in {codec_s:.2f} s = "
            f"{frames / codec_s:.1f} frames/s, RTF {codec_s / audio_s:.3f}"
        )
    if args.part == "both":
        print(f"total : RTF {(lm_s + codec_s) / audio_s:.3f} (real time = 12.5 frames/s = RTF 1)")


if __name__ == "__main__":
    main()
