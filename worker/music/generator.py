"""`MusicGenerator`: lyrics and tags in, a 48 kHz stereo waveform out (HeartMuLa LM, then HeartCodec)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.music.checkpoint import load_codec, load_gen_config, load_lm, validate_layout
from worker.music.codec import HeartCodec, onednn_disabled
from worker.music.lm import HeartMuLa, LMOutput
from worker.music.model_config import GenConfig
from worker.music.sampler import TopKSampler, generator_exponential
from worker.music.static_decode import GraphCaptureError, generate_static
from worker.music.tokenizer import Prompt, PromptEncoder

FRAME_MS = 80  # one LM frame = 80 ms of audio (12.5 frames/s)
# Frames generated between two EOS checks on a GPU: each check waits for the GPU, so checking every frame
# would stop the host from queueing the next frame's kernels while the current one runs.
GPU_EOS_CHECK_EVERY = 16

# How the LM's frame loop runs (docs/HEARTMULA.md §2.6): "static" (fixed shapes, the same tokens as
# "eager"), "graph" (static, captured once per song as a CUDA graph and replayed; CUDA only), "eager" (shapes
# follow the growing context). "auto" is "graph" on CUDA and "static" elsewhere.
DECODE_MODES = ("auto", "static", "graph", "eager")

ProgressCallback = Callable[[str, int, int], None]
log = logging.getLogger(__name__)


class GenerationCancelled(Exception):
    """`generate` stopped early because `should_stop()` returned True."""


class GenerationInputError(ValueError):
    """An argument `generate` cannot use; `field` names it the way the music job does."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class MusicResult:
    waveform: np.ndarray  # float32 [channels, samples] at 48 kHz
    frames: int  # LM frames generated (80 ms each)
    lm_s: float
    codec_s: float


class MusicGenerator:
    sample_rate: int = 48000
    channels: int = 2

    def __init__(
        self, lm: HeartMuLa, codec: HeartCodec, prompts: PromptEncoder, gen: GenConfig, decode: str = "auto"
    ) -> None:
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {decode!r}")
        self.lm = lm
        self.codec = codec
        self.prompts = prompts
        self.gen = gen
        self.device = lm.device
        if decode == "auto":
            decode = "graph" if self.device.type == "cuda" else "static"
        if decode == "graph" and self.device.type != "cuda":
            raise ValueError("decode='graph' needs a CUDA device")
        self.decode = decode

    @property
    def max_prompt_tokens(self) -> int:
        """Prompts up to this length fit with any allowed duration (a quarter of the backbone context)."""
        return self.lm.cfg.backbone.max_seq_len // 4

    @property
    def max_frames(self) -> int:
        """Frame steps a request may ask for (`duration_s · 12.5`): the context minus the prompt allowance
        and the one frame the reference generates beyond the requested length."""
        return self.lm.cfg.backbone.max_seq_len - self.max_prompt_tokens - 1

    @property
    def max_duration_s(self) -> float:
        return self.max_frames * FRAME_MS / 1000

    @classmethod
    def from_pretrained(
        cls,
        root: str | Path,
        *,
        device: str | torch.device = "cpu",
        version: str | None = None,
        compile_lm: bool = False,
        decode: str = "auto",
    ) -> MusicGenerator:
        """Loads the official layout under `root` (LM bf16 + codec fp32 on CUDA, all float32 on the CPU).
        `compile_lm` opts into `HeartMuLa.compile_transformers` (not measured on a GPU yet); `decode` is one
        of DECODE_MODES."""
        layout = validate_layout(root, version)
        device = torch.device(device)
        lm_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        gen = load_gen_config(layout.gen_config)
        lm = load_lm(layout.lm_dir, device=device, dtype=lm_dtype)
        if compile_lm:
            lm.compile_transformers()
        codec = load_codec(layout.codec_dir, device=device)
        return cls(lm, codec, PromptEncoder.from_file(layout.tokenizer, gen), gen, decode)

    def generate(
        self,
        *,
        lyrics: str,
        tags: str,
        duration_s: float,
        temperature: float = 1.0,
        topk: int = 50,
        cfg_scale: float = 1.5,
        seed: int,
        codec_steps: int = 10,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> MusicResult:
        """Generates up to `duration_s` of music (the LM may end the song earlier).

        The song length follows the reference: `duration_s · 1000 // 80` frame steps after the first frame.
        Raises GenerationInputError for arguments out of range and GenerationCancelled when `should_stop()` is True
        (checked after every LM frame and every codec step)."""
        self._check_arguments(duration_s, temperature, topk, cfg_scale, codec_steps)
        prompt = self.prompts.encode(tags, lyrics)
        n_steps = round(duration_s * 1000) // FRAME_MS
        if prompt.length + n_steps + 1 > self.lm.cfg.backbone.max_seq_len:
            raise GenerationInputError(
                "lyrics",
                f"with the tags, {prompt.length} tokens do not fit with {duration_s} s of audio in the "
                f"model's context of {self.lm.cfg.backbone.max_seq_len} positions; shorten the lyrics or the "
                f"duration (prompts up to {self.max_prompt_tokens} tokens always fit)",
            )

        def hook(phase: str) -> Callable[[int, int], None]:
            def report(done: int, total: int) -> None:
                if should_stop is not None and should_stop():
                    raise GenerationCancelled(f"cancelled during {phase} ({done}/{total})")
                if on_progress is not None:
                    on_progress(phase, done, total)

            return report

        generator = torch.Generator(device=self.device).manual_seed(seed % 2**64)
        started = time.perf_counter()
        out = self._run_lm(prompt, n_steps, cfg_scale, topk, temperature, generator, hook("lm"))
        frames = self._decodable(out.frames)
        lm_s = time.perf_counter() - started

        started = time.perf_counter()
        if frames.shape[1] == 0:
            wav = torch.zeros(self.channels, 0)
        else:
            codec_hook = hook("codec")
            codec_hook(0, self.codec.plan(frames.shape[1]) * (codec_steps + 1))

            def noise(shape: tuple[int, ...]) -> torch.Tensor:
                return torch.randn(shape, generator=generator, device=self.device)

            with onednn_disabled() if self.device.type == "cpu" else nullcontext():
                wav = self.codec.detokenize(frames, noise=noise, steps=codec_steps, on_step=codec_hook).wav
        codec_s = time.perf_counter() - started
        return MusicResult(wav.numpy(), frames.shape[1], lm_s, codec_s)

    def _run_lm(
        self,
        prompt: Prompt,
        n_steps: int,
        cfg_scale: float,
        topk: int,
        temperature: float,
        generator: torch.Generator,
        on_frame: Callable[[int, int], None],
    ) -> LMOutput:
        """The LM's frames with the configured decode; a CUDA graph that cannot be captured switches this
        generator to the eager loop for good (logged once), and the song is generated again from its seed."""
        state = generator.get_state()
        on_frame(0, n_steps + 1)
        args = {
            "n_steps": n_steps,
            "cfg_scale": cfg_scale,
            "sampler": TopKSampler(topk, temperature, generator_exponential(generator)),
            "stop_id": self.gen.audio_eos_id,
            "empty_id": self.gen.empty_id,
            "eos_check_every": GPU_EOS_CHECK_EVERY if self.device.type == "cuda" else 1,
            "on_frame": on_frame,
        }
        if self.decode == "eager":
            return self.lm.generate(prompt, **args)
        if self.decode == "static":
            return generate_static(self.lm, prompt, **args)
        try:
            return generate_static(self.lm, prompt, **args, cuda_graph=True, generator=generator)
        except GraphCaptureError as exc:
            log.warning("CUDA graph decode failed (%s); using the eager decode from now on", exc)
            self.decode = "eager"
            generator.set_state(state)
            return self.lm.generate(prompt, **args)

    def _decodable(self, frames: torch.Tensor) -> torch.Tensor:
        """Cuts the song before the first frame holding an id the codec has no entry for. The reference stops
        only at `audio_eos_id` and never checks the first frame, so such ids would crash its codec."""
        bad = (frames >= self.codec.cfg.codebook_size).any(dim=0).nonzero()
        return frames[:, : int(bad[0])] if bad.numel() else frames

    def _check_arguments(
        self, duration_s: float, temperature: float, topk: int, cfg_scale: float, codec_steps: int
    ) -> None:
        vocab = self.lm.cfg.audio_vocab_size
        problems = {
            "duration_s": f"must be > 0 and <= {self.max_duration_s:g}"
            if not (math.isfinite(duration_s) and 0 < duration_s <= self.max_duration_s)
            else None,
            "temperature": "must be > 0" if not (math.isfinite(temperature) and temperature > 0) else None,
            "topk": f"must be between 1 and {vocab}" if not 1 <= topk <= vocab else None,
            # cfg < 1 would run two independent conditional rows (docs/HEARTMULA.md §7.3): rejected, as it is meaningless.
            "cfg_scale": "must be >= 1" if not (math.isfinite(cfg_scale) and cfg_scale >= 1) else None,
            "codec_steps": "must be >= 1" if codec_steps < 1 else None,
        }
        for name, problem in problems.items():
            if problem:
                raise GenerationInputError(name, problem)
