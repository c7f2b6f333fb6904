"""Speed of the native HeartMuLa LM and HeartCodec, as frames/s and real-time factor (RTF).

Builds the models from their dimensions with random weights (no download): `--size tiny` is the test
checkpoint's size, `--size 3b` the released HeartMuLa-oss-3B (LM bf16 on CUDA) with the real HeartCodec.
The LM and the codec are timed separately on one song of `--seconds`; 12.5 frames/s is real time, so
RTF = (seconds to generate) / (seconds of audio), and RTF < 1 is faster than real time. Goals for 3B on one
H100/H200: LM RTF <= 0.1 with CFG (graph decode), combined RTF <= 0.5.

    python bench/music_rtf.py [--size tiny|3b] [--device cpu|cuda] [--seconds 30] [--cfg 1.5]
                              [--codec-steps 10] [--part lm|codec|both] [--decode eager|static|graph]
                              [--compile] [--json PATH]

--size          tiny (the test checkpoint's dimensions) or 3b (the released model's)
--device        cpu or cuda (the LM runs in bfloat16 on CUDA, float32 on the CPU; the codec in float32)
--seconds       song length generated and decoded (default 30)
--cfg           classifier-free guidance scale (default 1.5; 1.0 runs one row instead of two)
--codec-steps   Euler steps per codec window (default 10, as production)
--part          what to time: the LM, the codec or both (default)
--decode        the LM's frame loop (docs/HEARTMULA.md §2.6): eager, static, or graph (static captured as a
                CUDA graph). Without it every mode the device has runs, one `LM :` line each, side by side,
                each with its speed-up over the previous mode and whether its tokens equal that mode's.
                graph on a CPU runs static and says so.
--compile       torch.compile the LM's transformers (dynamic shapes) and time the eager loop on them
--json PATH     also write the figures as JSON

Every `LM :` / `codec :` line reads `<part> : <frames> frames (<label>) in <s> s = <fps> frames/s, RTF <rtf>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ace_step_rtf import ace_step_rtf
from cache.tiny import heartmula as tiny
from worker.music.codec import HeartCodec, onednn_disabled
from worker.music.lm import HeartMuLa, LMOutput
from worker.music.model_config import FLAVORS, CodecConfig, LMConfig, TransformerConfig
from worker.music.sampler import TopKSampler, generator_exponential
from worker.music.static_decode import generate_static
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


DECODES = ("eager", "static", "graph")


def decode_song(lm: HeartMuLa, decode: str, n_steps: int, cfg_scale: float, device: torch.device) -> LMOutput:
    """One song in the given decode, from the same seed and prompt each time."""
    generator = torch.Generator(device=device).manual_seed(0)
    args = {
        "n_steps": n_steps,
        "cfg_scale": cfg_scale,
        "sampler": TopKSampler(50, 1.0, generator_exponential(generator)),
        "stop_id": lm.cfg.audio_vocab_size,  # past the vocabulary: random weights must not end the song early
        "empty_id": 0,
        "eos_check_every": 16 if device.type == "cuda" else 1,
    }
    prompt = random_prompt(lm.cfg, PROMPT_TOKENS, torch.Generator().manual_seed(0))
    if decode == "eager":
        return lm.generate(prompt, **args)
    return generate_static(lm, prompt, **args, cuda_graph=decode == "graph", generator=generator)


def time_lm(
    lm: HeartMuLa, decode: str, frames: int, cfg_scale: float, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Seconds for a song of `frames` frames (a graph's capture included: it happens once per song)."""
    decode_song(lm, decode, 8, cfg_scale, device)  # warm-up: kernels, allocator, compilation
    synchronize(device)
    started = time.perf_counter()
    out = decode_song(lm, decode, frames - 1, cfg_scale, device)
    synchronize(device)
    return time.perf_counter() - started, out.frames.cpu()


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
    return time.perf_counter() - started, codec.plan(frames)


def lm_modes(args: argparse.Namespace, device: torch.device) -> list[tuple[str, str]]:
    """(label, decode) of each LM run: the one asked for, else every mode this device has."""
    if args.decode:
        if args.decode == "graph" and device.type != "cuda":
            return [("graph needs CUDA; ran static", "static")]
        return [(args.decode + (", compiled" if args.compile else ""), args.decode)]
    if args.compile:
        return [("eager, compiled", "eager")]
    return [(mode, mode) for mode in DECODES if mode != "graph" or device.type == "cuda"]


def rate_line(part: str, frames: int, label: str, seconds: float, audio_s: float) -> str:
    return (
        f"{part:<6}: {frames} frames ({label}) in {seconds:.2f} s = {frames / seconds:.1f} frames/s, "
        f"RTF {seconds / audio_s:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seconds", type=float, default=30.0, help="song length to generate and decode")
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--codec-steps", type=int, default=10)
    parser.add_argument("--part", choices=["lm", "codec", "both"], default="both")
    parser.add_argument("--decode", choices=DECODES, help="one LM decode (default: every mode, side by side)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the LM transformers")
    parser.add_argument("--ace-step", action="store_true", help="also time ACE-Step at this size")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
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

    figures: dict[str, float | int | bool] = {"frames": frames, "audio_s": audio_s}
    if args.part in ("lm", "both"):
        with torch.device(device):
            lm = HeartMuLa(lm_cfg)
        lm.to(lm_dtype).rebuild_buffers()  # RoPE tables stay float32
        lm.eval()
        if args.compile:
            lm.compile_transformers()
        # Each mode's tokens against the previous mode's: static against eager (other attention kernels,
        # so in bfloat16 a rare token may flip), graph against static (the same kernels: must be equal).
        previous: tuple[str, float, torch.Tensor] | None = None
        for label, decode in lm_modes(args, device):
            lm_s, tokens = time_lm(lm, decode, frames, args.cfg, device)
            line = rate_line("LM", frames, label, lm_s, audio_s)
            if previous is not None:
                name, seconds, reference = previous
                same = torch.equal(tokens, reference)
                line += f", {seconds / lm_s:.2f}x {name}, same tokens as {name}: {'yes' if same else 'NO'}"
                figures[f"lm_{decode}_same_tokens_as_{name}"] = same
            print(line, flush=True)
            previous = (decode, lm_s, tokens)
            figures[f"lm_{decode}_s"] = round(lm_s, 4)
            figures[f"lm_{decode}_rtf"] = round(lm_s / audio_s, 4)
        del lm
    if args.part in ("codec", "both"):
        with torch.device(device):
            codec = HeartCodec(codec_cfg).eval()
        codec_s, windows = time_codec(codec, frames, args.codec_steps, device)
        label = f"{windows} windows of 29.76 s, {codec.windows_per_batch()} per waveform batch"
        print(rate_line("codec", frames, label, codec_s, audio_s))
        figures.update(codec_s=round(codec_s, 4), codec_rtf=round(codec_s / audio_s, 4))
    if args.part == "both":
        lm_best = min(v for k, v in figures.items() if k.startswith("lm_") and k.endswith("_s"))
        print(
            f"total : RTF {(lm_best + codec_s) / audio_s:.3f} with the fastest LM decode (real time = RTF 1)"
        )
    if args.ace_step:
        heartmula_rtf = (lm_best + codec_s) / audio_s if args.part == "both" else None
        ace_rtf = ace_step_rtf(args.size, device, args.seconds)
        if heartmula_rtf:
            print(f"ratio : HeartMuLa RTF / ACE-Step RTF = {heartmula_rtf / ace_rtf:.1f}", flush=True)
        figures["ace_step_rtf"] = round(ace_rtf, 4)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
