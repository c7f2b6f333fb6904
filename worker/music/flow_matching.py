"""HeartCodec's flow matching (docs/HEARTMULA.md §4.2-§4.4): RVQ codes -> conditioning -> DiT velocity
field -> Euler integration from noise to the 256-channel latents of one window.

Parameter names match the official state dict under `flow_matching.`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.music.model_config import CodecConfig, mlp_width
from worker.music.rope import apply_rope, plain_frequencies, rope_table

# Draws standard normal noise of the given shape on the codec's device.
Noise = Callable[[tuple[int, ...]], torch.Tensor]

LATENTS_PER_CODE = 2  # codes at 12.5 Hz, latents at 25 Hz


# --- conditioning -----------------------------------------------------------------------------------------


class _Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Parameter(torch.randn(1, size, dim))


class _Quantizer(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self._codebook = _Codebook(size, dim)


class ResidualVQ(nn.Module):
    """Decode side of vector-quantize-pytorch's ResidualVQ: summed codebook rows, then `project_out`."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _Quantizer(cfg.codebook_size, cfg.codebook_dim) for _ in range(cfg.num_quantizers)
        )
        self.project_out = nn.Linear(cfg.codebook_dim, cfg.dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes [B, Q, T]` -> `[B, T, dim]`."""
        rows = torch.stack([q._codebook.embed[0][codes[:, i]] for i, q in enumerate(self.layers)])
        return self.project_out(rows.sum(dim=0))


# --- flow-matching estimator (DiT) ---------------------------------------------------------------------


class ConvProj(nn.Module):
    """Conv over time (k=3) scaled by 1/√3, then a Linear; `[B, N, in] -> [B, N, out]`."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.ffn_1 = nn.Conv1d(dim_in, dim_out, 3, padding=1)
        self.ffn_2 = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_2(self.ffn_1(x.transpose(1, 2)).transpose(1, 2) * 3**-0.5)


class _TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(2 * _TIME_FREQS, dim)
        self.linear_2 = nn.Linear(dim, dim)


class _TimeEmbedding(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = _TimestepEmbedder(dim)


_TIME_FREQS = 256


def timestep_features(t: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features `[cos, sin]` of `1000·t` (diffusers' get_timestep_embedding, flip_sin_to_cos)."""
    exponent = (
        -math.log(10000) * torch.arange(_TIME_FREQS, dtype=torch.float32, device=t.device) / _TIME_FREQS
    )
    angles = 1000 * (t[:, None].float() * torch.exp(exponent)[None])
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class AdaLNSingle(nn.Module):
    """Timestep embedding `e [B, D]` and the block modulation `Linear(silu(e)) [B, 6D]`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.emb = _TimeEmbedding(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedder = self.emb.timestep_embedder
        e = embedder.linear_2(F.silu(embedder.linear_1(timestep_features(t).to(self.linear.weight.dtype))))
        return self.linear(F.silu(e)), e


class DiTRMSNorm(nn.Module):
    """RMS norm in the input dtype (no float32 upcast), eps 1e-6."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class DiTAttention(nn.Module):
    """Plain multi-head self-attention with unscaled interleaved RoPE; no mask, no bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, n, self.heads, -1), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(b, n, self.heads, -1), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class DiTMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = mlp_width(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_norm = DiTRMSNorm(dim)
        self.attn = DiTAttention(dim, heads)
        self.mlp_norm = DiTRMSNorm(dim)
        self.mlp = DiTMLP(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, mod: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        b, _, d = x.shape
        # Chunk order: shift, scale, gate (attention), then shift, scale, gate (MLP).
        sh1, sc1, g1, sh2, sc2, g2 = (self.scale_shift_table[None] + mod.view(b, 6, d)).chunk(6, dim=1)
        x = x + g1 * self.attn(self.attn_norm(x) * (1 + sc1) + sh1, cos, sin)
        return x + g2 * self.mlp(self.mlp_norm(x) * (1 + sc2) + sh2)


def _final_modulation(s: torch.Tensor, table: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    shift, scale = (table[None] + e[:, None]).chunk(2, dim=1)  # row 0 shift, row 1 scale
    return F.layer_norm(s, (s.shape[-1],), eps=1e-6) * (1 + scale) + shift


class Estimator(nn.Module):
    """The flow-matching velocity field `est(x [B, N, Cin], t [B]) -> [B, N, 256]` (docs/HEARTMULA.md §4.3)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        d1, heads = cfg.dit_dim, cfg.num_attention_heads
        d2 = 2 * d1
        self.heads = heads
        self.proj_in = ConvProj(cfg.in_channels, d1)
        self.adaln_single = AdaLNSingle(d1)
        self.transformer_blocks = nn.ModuleList(DiTBlock(d1, heads) for _ in range(cfg.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(2, d1) / d1**0.5)
        self.connection_proj = ConvProj(cfg.in_channels + d1, d2)
        self.adaln_single_2 = AdaLNSingle(d2)
        self.transformer_blocks_2 = nn.ModuleList(DiTBlock(d2, heads) for _ in range(cfg.num_layers_2))
        self.scale_shift_table_2 = nn.Parameter(torch.randn(2, d2) / d2**0.5)
        self.proj_out = ConvProj(d2, cfg.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.proj_in(x)
        mod, e = self.adaln_single(t)
        cos, sin = self._rope(s)
        for block in self.transformer_blocks:
            s = block(s, mod, cos, sin)
        s = _final_modulation(s, self.scale_shift_table, e)
        y = self.connection_proj(torch.cat([x, s], dim=-1))
        mod, e = self.adaln_single_2(t)
        cos, sin = self._rope(y)
        for block in self.transformer_blocks_2:
            y = block(y, mod, cos, sin)
        y = _final_modulation(y, self.scale_shift_table_2, e)
        return self.proj_out(y)

    def _rope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_table(plain_frequencies(x.shape[-1] // self.heads).to(x.device), x.shape[1])
        return cos.to(x.dtype), sin.to(x.dtype)


def solve_euler(
    estimator: Estimator,
    x: torch.Tensor,
    incontext: torch.Tensor,
    incontext_length: int,
    t_span: torch.Tensor,
    mu: torch.Tensor,
    guidance: float,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Euler integration of the flow from noise `x` (docs/HEARTMULA.md §4.4); the first `incontext_length` frames are
    re-noised towards `incontext` before every step. Time stays float32 and accumulates like the reference."""
    lc = incontext_length
    t, dt = t_span[0], t_span[1] - t_span[0]
    noise = x.clone()
    x = x.clone()
    for step in range(1, len(t_span)):
        x[:, :lc] = (1 - (1 - 1e-6) * t) * noise[:, :lc] + t * incontext[:, :lc]
        if guidance > 1.0:
            uncond = torch.cat([x, incontext, torch.zeros_like(mu)], dim=2)
            cond = torch.cat([x, incontext, mu], dim=2)
            v2 = estimator(torch.cat([uncond, cond]), t.repeat(2))
            v = v2[:1] + guidance * (v2[1:] - v2[:1])
        else:
            v = estimator(torch.cat([x, incontext, mu], dim=2), t[None])
        x = x + dt * v
        t = t + dt
        if step < len(t_span) - 1:
            dt = t_span[step + 1] - t
        if on_step:
            on_step()
    return x


class FlowMatching(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vq_embed = ResidualVQ(cfg)
        self.cond_feature_emb = nn.Linear(cfg.dim, cfg.dim)
        self.estimator = Estimator(cfg)

    def condition(self, codes: torch.Tensor) -> torch.Tensor:
        """`codes [B, Q, T]` -> `mu [B, 2T, dim]`: embedded codes, each repeated for the 25 Hz latents."""
        return self.cond_feature_emb(self.vq_embed(codes)).repeat_interleave(LATENTS_PER_CODE, dim=1)

    def inference_codes(
        self,
        codes: torch.Tensor,
        incontext: torch.Tensor,
        incontext_length: int,
        noise: Noise,
        steps: int,
        guidance: float,
        on_step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """One window: `codes [1, Q, W]`, `incontext [1, 2W, 256]` (frames past the context are ignored)."""
        mu = self.condition(codes)
        z = noise((1, mu.shape[1], self.cfg.out_channels))
        incontext = incontext.clone()
        incontext[:, incontext_length:] = 0
        t_span = torch.linspace(0, 1, steps + 1, device=z.device)
        x = solve_euler(self.estimator, z, incontext, incontext_length, t_span, mu, guidance, on_step)
        x[:, :incontext_length] = incontext[:, :incontext_length]
        return x
