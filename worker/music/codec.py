"""HeartCodec decoding (SPEC §4): RVQ codes -> flow-matching latents (DiT + Euler) -> waveform.

Parameter names match the official state dict (prefixes `flow_matching.` and `scalar_model.`). The scalar
decoder's weight-normed convolutions are plain convolutions here: the loader folds `g·v/‖v‖` once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.music.config import CodecConfig, mlp_width
from worker.music.rope import apply_rope, plain_frequencies, rope_table

# Draws standard normal noise of the given shape on the codec's device.
Noise = Callable[[tuple[int, ...]], torch.Tensor]
# (steps done, steps in all); may raise to stop decoding.
StepHook = Callable[[int, int], None]
# Receives named intermediates (conformance tracing); None in production.
Trace = Callable[[str, torch.Tensor], None]

# Windowing of detokenize with its defaults (duration 29.76 s): codes at 12.5 Hz, latents at 25 Hz.
WINDOW_CODES = 372  # int(29.76 * 12.5)
HOP_CODES = 320  # 372 // 93 * 80
OVERLAP_CODES = WINDOW_CODES - HOP_CODES  # 52
LATENTS_PER_CODE = 2
WINDOW_LATENTS = WINDOW_CODES * LATENTS_PER_CODE  # 744
OVERLAP_LATENTS = OVERLAP_CODES * LATENTS_PER_CODE  # 104: the in-context frames of later windows
CODE_RATE_HZ = 12.5
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 1.25


@contextmanager
def onednn_disabled() -> Iterator[None]:
    """Turns oneDNN off on the CPU (SPEC §7.5): with it, the first waveform decode of each input shape spends
    tens of seconds in kernel warm-up. The fixtures were also produced without it."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


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
    """The flow-matching velocity field `est(x [B, N, Cin], t [B]) -> [B, N, 256]` (SPEC §4.3)."""

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

    def forward(self, x: torch.Tensor, t: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        emit = trace or (lambda name, value: None)
        s = self.proj_in(x)
        emit("proj_in_out", s)
        mod, e = self.adaln_single(t)
        emit("adaln_timestep_mod", mod)
        emit("adaln_embedded_timestep", e)
        cos, sin = self._rope(s)
        for i, block in enumerate(self.transformer_blocks):
            s = block(s, mod, cos, sin)
            if i == 0:
                emit("block0_out", s)
        s = _final_modulation(s, self.scale_shift_table, e)
        y = self.connection_proj(torch.cat([x, s], dim=-1))
        emit("connection_proj_out", y)
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
    """Euler integration of the flow from noise `x` (SPEC §4.4); the first `incontext_length` frames are
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


# --- scalar (waveform) decoder -----------------------------------------------------------------------------


class CausalConv1d(nn.Conv1d):
    """Left-pads `dilation·(k−1)` zeros, so output frame t sees inputs ≤ t only."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(channels, channels, kernel, dilation)
        self.activation1 = nn.PReLU()
        self.conv2 = nn.Conv1d(channels, channels, 1)
        self.activation2 = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.activation2(self.conv2(self.activation1(self.conv1(x))))


class _UpConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.layer = nn.ConvTranspose1d(c_in, c_out, 2 * factor, stride=factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)[..., : -self.factor]  # causal trim to exactly factor·T samples


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, factor: int, kernel: int) -> None:
        super().__init__()
        self.up_conv = _UpConv(c_in, c_out, factor)
        self.convs = nn.ModuleList(ResidualUnit(c_out, kernel, d) for d in (1, 3, 5, 7, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up_conv(x)
        for unit in self.convs:
            x = unit(x)
        return x


class _Output(nn.Module):
    """Repeats each step `num_samples` times, then a causal conv with PReLU."""

    def __init__(self, channels: int, kernel: int, repeats: int) -> None:
        super().__init__()
        self.repeats = repeats
        self.conv = CausalConv1d(channels, channels, kernel)
        self.activation = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x.repeat_interleave(self.repeats, dim=-1)))


class ScalarDecoder(nn.Module):
    """`decode(z [B, 128, N]) -> [B, 1, 1920·N]` (SPEC §4.5)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        depth = len(cfg.upsample_factors)
        k = cfg.res_kernel_size
        blocks: list[nn.Module] = [nn.Conv1d(cfg.latent_hidden_dim, cfg.channels(depth), 5, padding=2)]
        for n, factor in enumerate(cfg.upsample_factors, start=1):
            blocks.append(UpBlock(cfg.channels(depth + 1 - n), cfg.channels(depth - n), factor, k))
        blocks.append(_Output(cfg.channels(0), k, cfg.num_samples))
        blocks.append(CausalConv1d(cfg.channels(0), 1, k))
        self.decoder = nn.ModuleList(blocks)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.round(9 * z) / 9  # the scalar quantizer's grid; half to even like the reference
        for block in self.decoder:
            x = block(x)
        return x


# --- detokenize --------------------------------------------------------------------------------------------


@dataclass
class Detokenized:
    wav: torch.Tensor  # [2, samples] float32 on the CPU
    window_latents: list[torch.Tensor]  # flow output of each window, [1, 744, 256]


class HeartCodec(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.flow_matching = FlowMatching(cfg)
        self.scalar_model = ScalarDecoder(cfg)

    @property
    def device(self) -> torch.device:
        return self.flow_matching.cond_feature_emb.weight.device

    @property
    def samples_per_code(self) -> int:
        return LATENTS_PER_CODE * self.cfg.samples_per_latent

    def plan(self, n_codes: int, *, reference_quirks: bool) -> int:
        """Number of windows that decode `n_codes` code frames."""
        return len(_window_starts(_padded_length(n_codes, reference_quirks)))

    @torch.inference_mode()
    def detokenize(
        self,
        frames: torch.Tensor,
        *,
        noise: Noise,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        reference_quirks: bool = False,
        on_step: StepHook | None = None,
    ) -> Detokenized:
        """`frames [Q, T]` -> stereo waveform at 48 kHz (SPEC §4.6).

        Short songs are tiled to one full window; longer ones are cut into 372-code windows every 320 codes,
        each later window conditioned on the previous one's last 104 latents, and crossfaded over 52 codes.

        `reference_quirks` reproduces the reference exactly: its unused noise draws (so a shared RNG stays
        in step), its padding test (which leaves the final 52 codes undecoded when (T − 104) % 320 == 0),
        and its float length `int(T / 12.5 · 48000)`. Without it every code is decoded, the output has
        exactly T · 3840 samples and no noise is drawn that is not used.
        """
        t_codes = frames.shape[-1]
        if t_codes == 0:
            raise ValueError("detokenize needs at least one frame")
        codes = frames[None].long().to(self.device)
        if reference_quirks:
            noise((1, WINDOW_LATENTS, self.cfg.out_channels))  # the reference's unused first-window latents
            target = int(t_codes / CODE_RATE_HZ * self.cfg.sample_rate)
        else:
            target = t_codes * self.samples_per_code
        codes = _tile(codes, _padded_length(t_codes, reference_quirks))
        starts = _window_starts(codes.shape[-1])

        total = len(starts) * (steps + 1)  # Euler steps plus one waveform decode per window
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if on_step:
                on_step(done, total)

        fm = self.flow_matching
        latents: list[torch.Tensor] = []
        context = torch.zeros(1, WINDOW_LATENTS, self.cfg.out_channels, device=self.device)
        for k, start in enumerate(starts):
            window = codes[:, :, start : start + WINDOW_CODES]
            if k == 0:
                latents.append(fm.inference_codes(window, context, 0, noise, steps, guidance, tick))
                continue
            if reference_quirks:
                noise((1, WINDOW_LATENTS - OVERLAP_LATENTS, self.cfg.out_channels))  # drawn, never used
            context = torch.zeros_like(context)
            context[:, :OVERLAP_LATENTS] = latents[-1][:, -OVERLAP_LATENTS:]
            latents.append(fm.inference_codes(window, context, OVERLAP_LATENTS, noise, steps, guidance, tick))

        overlap = OVERLAP_CODES * self.samples_per_code
        out: torch.Tensor | None = None
        for latent in latents:
            y = self._decode_window(latent)
            tick()
            if out is None:
                out = y
                continue
            ramp = torch.linspace(0, 1, overlap, dtype=torch.float64)
            out[:, -overlap:] = out[:, -overlap:] * (1 - ramp) + y[:, :overlap] * ramp
            out = torch.cat([out, y[:, overlap:]], dim=1)
        assert out is not None
        return Detokenized(out[:, :target], latents)

    def _decode_window(self, latent: torch.Tensor) -> torch.Tensor:
        """`[1, N, 256]` latents -> `[2, N·1920]` float32 on the CPU; channel c is latent dims 128c..+127."""
        n = latent.shape[1]
        half = self.cfg.latent_hidden_dim
        z = latent[0].reshape(n, 2, half).permute(1, 2, 0)
        return self.scalar_model.decode(z)[:, 0, : n * self.cfg.samples_per_latent].float().cpu()


def _padded_length(n_codes: int, reference_quirks: bool) -> int:
    """Code length after tiling short songs to a window and padding so that the windows cover it."""
    n = max(n_codes, WINDOW_CODES)
    # The reference tests the remainder against the latent overlap (104) but pads with the code overlap
    # (52); testing with 52 is what makes the last window reach the end.
    test = n - (OVERLAP_LATENTS if reference_quirks else OVERLAP_CODES)
    if test % HOP_CODES > 0:
        n = math.ceil((n - OVERLAP_CODES) / HOP_CODES) * HOP_CODES + OVERLAP_CODES
    return n


def _tile(codes: torch.Tensor, length: int) -> torch.Tensor:
    """Doubles the sequence by concatenation until it is long enough, then cuts (the reference's padding)."""
    if codes.shape[-1] < WINDOW_CODES:
        while codes.shape[-1] < WINDOW_CODES:
            codes = torch.cat([codes, codes], dim=-1)
        codes = codes[..., :WINDOW_CODES]
    while codes.shape[-1] < length:
        codes = torch.cat([codes, codes], dim=-1)
    return codes[..., :length]


def _window_starts(n_codes: int) -> list[int]:
    return list(range(0, n_codes - HOP_CODES + 1, HOP_CODES))
