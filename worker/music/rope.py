"""Rotary position embeddings on interleaved pairs (Meta layout), shared by the LM and the codec's DiT."""

from __future__ import annotations

import math

import torch

# The Llama-3 RoPE scaling constants torchtune hard-codes (low/high frequency factors, original context).
_LOW_FREQ_FACTOR = 1.0
_HIGH_FREQ_FACTOR = 4.0
_OLD_CONTEXT_LEN = 8192


def llama3_frequencies(head_dim: int, base: float, scale_factor: float) -> torch.Tensor:
    """Per-pair rotation frequencies with Llama-3 scaling, in the reference's float32 scalar arithmetic.

    Always computed on the CPU (it branches on values), also while modules are being built on `meta`."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    low_wavelen = _OLD_CONTEXT_LEN / _LOW_FREQ_FACTOR
    high_wavelen = _OLD_CONTEXT_LEN / _HIGH_FREQ_FACTOR
    scaled = []
    for freq in freqs:  # 0-dim float32 tensors, so every step rounds like the reference
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            scaled.append(freq)
        elif wavelen > low_wavelen:
            scaled.append(freq / scale_factor)
        else:
            smooth = (_OLD_CONTEXT_LEN / wavelen - _LOW_FREQ_FACTOR) / (_HIGH_FREQ_FACTOR - _LOW_FREQ_FACTOR)
            scaled.append((1 - smooth) * freq / scale_factor + smooth * freq)
    return torch.stack(scaled)


def plain_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Unscaled frequencies `1 / base^(2i/hd)` (the codec's DiT)."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_table(freqs: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of `p·f_i` for positions p < length, `[length, hd/2]` float32."""
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=freqs.device), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates the pairs (x[2i], x[2i+1]) of `x [..., s, h, hd]` in float32; cos/sin are `[s, hd/2]`."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = cos[:, None], sin[:, None]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).to(x.dtype)
