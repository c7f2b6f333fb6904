"""HeartCodec decoding (docs/HEARTMULA.md §4): RVQ codes -> flow-matching latents (`flow_matching`) ->
waveform, window by window.

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

from worker.music.flow_matching import LATENTS_PER_CODE, FlowMatching, Noise
from worker.music.model_config import CodecConfig

# (steps done, steps in all); may raise to stop decoding.
StepHook = Callable[[int, int], None]

# Windowing of detokenize with its defaults (duration 29.76 s): codes at 12.5 Hz, latents at 25 Hz.
WINDOW_CODES = 372  # int(29.76 * 12.5)
HOP_CODES = 320  # 372 // 93 * 80
OVERLAP_CODES = WINDOW_CODES - HOP_CODES  # 52
WINDOW_LATENTS = WINDOW_CODES * LATENTS_PER_CODE  # 744
OVERLAP_LATENTS = OVERLAP_CODES * LATENTS_PER_CODE  # 104: the in-context frames of later windows
DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 1.25
# The waveform decoder's peak memory per window: its widest tensor (c_0 channels at 1920 samples per latent
# frame, float32, for each of the 2 stereo channels) about this many times (input, residual, output).
_LIVE_WIDEST = 4
# Memory the waveform decoder may use for a batch of windows: this on the CPU, half the free memory on CUDA.
CPU_DECODE_BUDGET = 2 << 30


@contextmanager
def onednn_disabled() -> Iterator[None]:
    """Turns oneDNN off on the CPU (docs/HEARTMULA.md §7.5): with it, the first waveform decode of each input shape spends
    tens of seconds in kernel warm-up. The fixtures were also produced without it."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


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
    """`decode(z [B, 128, N]) -> [B, 1, 1920·N]` (docs/HEARTMULA.md §4.5)."""

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

    def plan(self, n_codes: int) -> int:
        """Number of windows that decode `n_codes` code frames."""
        return len(window_starts(padded_length(n_codes)))

    @torch.inference_mode()
    def detokenize(
        self,
        frames: torch.Tensor,
        *,
        noise: Noise,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        on_step: StepHook | None = None,
    ) -> Detokenized:
        """`frames [Q, T]` -> stereo waveform at 48 kHz, exactly T · 3840 samples (docs/HEARTMULA.md §4.6).

        Short songs are tiled to one full window; longer ones are cut into 372-code windows every 320 codes,
        each later window conditioned on the previous one's last 104 latents, and crossfaded over 52 codes.
        Every code is decoded and `noise` is called once per window."""
        t_codes = frames.shape[-1]
        if t_codes == 0:
            raise ValueError("detokenize needs at least one frame")
        codes = tile_codes(frames[None].long().to(self.device), padded_length(t_codes))
        starts = window_starts(codes.shape[-1])
        total = len(starts) * (steps + 1)  # Euler steps plus one waveform decode per window
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            if on_step:
                on_step(done, total)

        latents = self.flow_windows(codes, starts, noise, steps, guidance, tick)
        return Detokenized(self.render(latents, tick)[:, : t_codes * self.samples_per_code], latents)

    def flow_windows(
        self,
        codes: torch.Tensor,
        starts: list[int],
        noise: Noise,
        steps: int,
        guidance: float,
        on_step: Callable[[], None] | None = None,
    ) -> list[torch.Tensor]:
        """The flow-matching latents `[1, 744, 256]` of each window of `codes [1, Q, N]`. Sequential by
        nature: a window's in-context frames are the previous window's final latents."""
        fm = self.flow_matching
        latents: list[torch.Tensor] = []
        context = torch.zeros(1, WINDOW_LATENTS, self.cfg.out_channels, device=self.device)
        for start in starts:
            window = codes[:, :, start : start + WINDOW_CODES]
            if not latents:
                latents.append(fm.inference_codes(window, context, 0, noise, steps, guidance, on_step))
                continue
            context = torch.zeros_like(context)
            context[:, :OVERLAP_LATENTS] = latents[-1][:, -OVERLAP_LATENTS:]
            latents.append(
                fm.inference_codes(window, context, OVERLAP_LATENTS, noise, steps, guidance, on_step)
            )
        return latents

    def render(
        self, latents: list[torch.Tensor], on_window: Callable[[], None] | None = None
    ) -> torch.Tensor:
        """The windows' waveforms crossfaded over 52 codes, `[2, samples]` float32 on the CPU. Windows are
        independent here, so the waveform decoder takes `windows_per_batch()` of them at once."""
        overlap = OVERLAP_CODES * self.samples_per_code
        ramp = torch.linspace(0, 1, overlap, dtype=torch.float64)
        per_batch = self.windows_per_batch()
        out: torch.Tensor | None = None
        for first in range(0, len(latents), per_batch):
            group = latents[first : first + per_batch]
            for y in self._decode_windows(torch.cat(group)):
                if on_window:
                    on_window()
                if out is None:
                    out = y
                    continue
                out[:, -overlap:] = out[:, -overlap:] * (1 - ramp) + y[:, :overlap] * ramp
                out = torch.cat([out, y[:, overlap:]], dim=1)
        if out is None:
            raise ValueError("render needs at least one window")
        return out

    def windows_per_batch(self) -> int:
        """Windows whose waveforms fit in one decoder batch: in half the free memory on CUDA (about 3 GB
        per window at the real size), in CPU_DECODE_BUDGET on the CPU; at least one."""
        widest = 2 * WINDOW_LATENTS * self.cfg.samples_per_latent * self.cfg.channels(0) * 4
        if self.device.type == "cuda":
            budget = torch.cuda.mem_get_info(self.device)[0] // 2
        else:
            budget = CPU_DECODE_BUDGET
        return max(1, budget // (_LIVE_WIDEST * widest))

    def _decode_windows(self, latents: torch.Tensor) -> torch.Tensor:
        """`[W, N, 256]` latents -> `[W, 2, N·1920]` float32 on the CPU; channel c is latent dims 128c..+127."""
        w, n, _ = latents.shape
        half = self.cfg.latent_hidden_dim
        z = latents.reshape(w, n, 2, half).permute(0, 2, 3, 1).reshape(w * 2, half, n)
        wav = self.scalar_model.decode(z)[:, 0, : n * self.cfg.samples_per_latent]
        return wav.reshape(w, 2, -1).float().cpu()


def padded_length(n_codes: int) -> int:
    """Code length after tiling short songs to a window and padding so that the windows cover every code.
    The reference tests the remainder with the latent overlap (104) instead of the code overlap (52), which
    leaves its last 52 codes undecoded when (T − 104) % 320 == 0 (docs/HEARTMULA.md §7.7)."""
    n = max(n_codes, WINDOW_CODES)
    if (n - OVERLAP_CODES) % HOP_CODES > 0:
        n = math.ceil((n - OVERLAP_CODES) / HOP_CODES) * HOP_CODES + OVERLAP_CODES
    return n


def tile_codes(codes: torch.Tensor, length: int) -> torch.Tensor:
    """Doubles the sequence by concatenation until it is long enough, then cuts (the reference's padding)."""
    if codes.shape[-1] < WINDOW_CODES:
        while codes.shape[-1] < WINDOW_CODES:
            codes = torch.cat([codes, codes], dim=-1)
        codes = codes[..., :WINDOW_CODES]
    while codes.shape[-1] < length:
        codes = torch.cat([codes, codes], dim=-1)
    return codes[..., :length]


def window_starts(n_codes: int) -> list[int]:
    return list(range(0, n_codes - HOP_CODES + 1, HOP_CODES))
