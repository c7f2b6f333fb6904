"""ACE-Step 1.5 for the music job: diffusers' `AceStepPipeline`, text2music and cover.

The model folder is AceStepPipeline's layout, optionally with `cover/audio_tokenizer` and
`cover/audio_token_detokenizer`: the codec that turns the song to cover into the 5 Hz semantic tokens the DiT is
conditioned on. With it a cover keeps the reference's structure and timbre; without it (the released turbo
repo has none) the reference conditions the timbre only, as diffusers' own cover example does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

COVER_DIR = "cover"
MAX_LYRIC_TOKENS = 2048  # AceStepPipeline's max_lyric_length: longer lyrics would be cut without a word
BASE_GUIDANCE = 7.0  # the pipeline's default for base/sft checkpoints


@dataclass(frozen=True)
class Songs:
    """A batch of generated songs: float32 `[batch, channels, samples]` at `sample_rate`."""

    waveforms: np.ndarray
    sample_rate: int
    generate_s: float  # the whole pipeline call: text encoding, diffusion, VAE decode


class AceStepEngine:
    """One loaded AceStepPipeline, resident on its device."""

    def __init__(self, pipe: Any, device: str) -> None:
        self.pipe = pipe
        self.device = device

    @classmethod
    def from_folder(cls, folder: Path, device: str) -> AceStepEngine:
        import torch
        from diffusers import AceStepPipeline
        from diffusers.pipelines.ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer

        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        cover = Path(folder) / COVER_DIR
        codec: dict[str, Any] = {"audio_tokenizer": None, "audio_token_detokenizer": None}
        if (cover / "audio_tokenizer" / "config.json").is_file():
            codec = {
                "audio_tokenizer": AceStepAudioTokenizer.from_pretrained(
                    cover / "audio_tokenizer", dtype=dtype
                ),
                "audio_token_detokenizer": AceStepAudioTokenDetokenizer.from_pretrained(
                    cover / "audio_token_detokenizer", dtype=dtype
                ),
            }
        pipe = AceStepPipeline.from_pretrained(folder, dtype=dtype, **codec)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device)

    def _rng_devices(self) -> list[int]:
        import torch

        return [torch.cuda.current_device()] if self.device == "cuda" else []

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.sample_rate)

    @property
    def cover_mode(self) -> str:
        """What a cover takes from its reference: with the audio codec its structure too, else its timbre."""
        return "structure+timbre" if self.pipe.audio_tokenizer is not None else "timbre"

    @property
    def is_turbo(self) -> bool:
        """Turbo checkpoints have guidance distilled in: the pipeline ignores any guidance scale."""
        return bool(self.pipe.is_turbo)

    max_lyric_tokens: int = MAX_LYRIC_TOKENS

    def lyric_tokens(self, lyrics: str) -> int:
        """The lyrics' length as the pipeline encodes them, its language header included."""
        _, formatted = self.pipe._format_prompt(prompt="", lyrics=lyrics)
        return len(self.pipe.tokenizer(formatted).input_ids)

    def generate(
        self,
        *,
        lyrics: str,
        tags: str,
        duration_s: float,
        steps: int,
        guidance: float | None,
        seeds: list[int],
        reference: np.ndarray | None,
        cover_strength: float,
        on_step: Callable[[int, int], None],
    ) -> Songs:
        """One song per seed. `reference` (`[2, samples]` at `sample_rate`) makes it a cover of that song: its
        timbre through the timbre encoder, its structure through the audio codec when loaded (`cover_mode`).
        `on_step(done, total)` runs after every diffusion step and may raise to stop the job there."""
        import torch

        def step_end(pipe: Any, step: int, timestep: float, tensors: dict[str, Any]) -> dict[str, Any]:
            on_step(step + 1, steps)
            return tensors

        cover: dict[str, Any] = {}
        if reference is not None:
            audio = torch.from_numpy(reference)
            cover = {"task_type": "cover", "reference_audio": audio, "audio_cover_strength": cover_strength}
            if self.pipe.audio_tokenizer is not None:
                cover["src_audio"] = audio
        started = time.perf_counter()
        # the VAE samples its encodings of a cover's reference from the global generator: seeded, then restored
        with torch.inference_mode(), torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(seeds[0])
            audios = self.pipe(
                prompt=[tags.replace(",", ", ")] * len(seeds),
                lyrics=[lyrics] * len(seeds),
                audio_duration=duration_s,
                num_inference_steps=steps,
                guidance_scale=guidance
                if guidance is not None
                else (1.0 if self.is_turbo else BASE_GUIDANCE),
                # CPU generators: the same seed gives the same noise on any device
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                max_lyric_length=MAX_LYRIC_TOKENS,
                callback_on_step_end=step_end,
                output_type="np",
                **cover,
            ).audios
        return Songs(audios, self.sample_rate, time.perf_counter() - started)
