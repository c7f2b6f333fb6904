"""The reference's detokenize window plan, quirks included (docs/HEARTMULA.md §4.6, §7.7), built from the
production codec's pieces: its own padding test, its unused noise draws and its float output length.

Production decodes every code and draws only the noise it uses; the fixtures were made by the reference,
so reproducing them (and the RNG stream an end-to-end case shares with the LM) needs this plan.
"""

from __future__ import annotations

import math

import torch

from worker.music.codec import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    HOP_CODES,
    OVERLAP_CODES,
    OVERLAP_LATENTS,
    WINDOW_CODES,
    WINDOW_LATENTS,
    Detokenized,
    HeartCodec,
    tile_codes,
    window_starts,
)
from worker.music.flow_matching import Noise

CODE_RATE_HZ = 12.5


def reference_padded_length(n_codes: int) -> int:
    """The reference tests the remainder against the latent overlap (104) but pads with the code overlap
    (52), so for (T − 104) % 320 == 0 nothing is padded and the last 52 codes are never decoded."""
    n = max(n_codes, WINDOW_CODES)
    if (n - OVERLAP_LATENTS) % HOP_CODES > 0:
        n = math.ceil((n - OVERLAP_CODES) / HOP_CODES) * HOP_CODES + OVERLAP_CODES
    return n


def reference_plan(n_codes: int) -> int:
    """Number of windows the reference decodes for `n_codes` code frames."""
    return len(window_starts(reference_padded_length(n_codes)))


class ReferenceNoise:
    """Wraps a window's noise source with the draws the reference makes and never uses: the first
    window's `[1, 744, 256]` "true latents" before its noise, and `[1, 640, 256]` before each later one's."""

    def __init__(self, noise: Noise, channels: int) -> None:
        self.noise = noise
        self.channels = channels
        self.windows = 0

    def __call__(self, shape: tuple[int, ...]) -> torch.Tensor:
        unused = WINDOW_LATENTS if self.windows == 0 else WINDOW_LATENTS - OVERLAP_LATENTS
        self.noise((1, unused, self.channels))
        self.windows += 1
        return self.noise(shape)


@torch.inference_mode()
def reference_detokenize(codec: HeartCodec, frames: torch.Tensor, noise: Noise) -> Detokenized:
    """`codec.detokenize(frames)` as the reference does it, with its default steps and guidance."""
    t_codes = frames.shape[-1]
    codes = tile_codes(frames[None].long().to(codec.device), reference_padded_length(t_codes))
    latents = codec.flow_windows(
        codes,
        window_starts(codes.shape[-1]),
        ReferenceNoise(noise, codec.cfg.out_channels),
        DEFAULT_STEPS,
        DEFAULT_GUIDANCE,
    )
    wav = codec.render(latents)
    return Detokenized(wav[:, : int(t_codes / CODE_RATE_HZ * codec.cfg.sample_rate)], latents)
