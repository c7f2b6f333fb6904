"""HeartMuLa: a Llama-3.2 backbone over 9-slot frame embeddings plus a small local decoder (docs/HEARTMULA.md §2).

Parameter names match the official state dict, so checkpoints load by their own keys. KV caches are not
part of the modules: each `generate` call allocates its own, sized for that request and holding only the
KV heads, which keeps the model reentrant and lets CFG (batch 2) and no-CFG (batch 1) requests alternate.
This module holds the eager frame loop (shapes follow the growing context); `static_decode` runs the same
frame step on fixed shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.music.model_config import LMConfig, TransformerConfig
from worker.music.rope import apply_rope, llama3_frequencies, rope_table
from worker.music.tokenizer import Prompt

# (logits [B', V] float32, codebook index) -> tokens [B', 1] int32
Sampler = Callable[[torch.Tensor, int], torch.Tensor]
# (frames done, frames at most); may raise to stop generation.
FrameHook = Callable[[int, int], None]


@dataclass(frozen=True)
class StaticPosition:
    """One query at a position held in a tensor, for a step whose shapes never change: `pos [1]` int64 is
    the slot the step writes, `valid [1, 1, 1, capacity]` bool the slots it may attend to (those <= pos)."""

    pos: torch.Tensor
    valid: torch.Tensor


# Where a transformer call writes and what it attends to: a Python int `start` for the positions
# start..start+s-1 (attending to exactly that prefix), or a StaticPosition.
At = int | StaticPosition


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.scale


class KVCache:
    """Keys and values of every layer, `[layers, B, Hkv, capacity, hd]`, unexpanded (GQA is done in SDPA)."""

    def __init__(
        self, cfg: TransformerConfig, batch: int, capacity: int, dtype: torch.dtype, device: torch.device
    ):
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dim, kv_dim = cfg.embed_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_dim, bias=False)
        self.output_proj = nn.Linear(cfg.num_heads * cfg.head_dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        at: At,
    ) -> torch.Tensor:
        b, s, _ = x.shape
        q = apply_rope(self.q_proj(x).view(b, s, self.num_heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        gqa = self.num_heads != self.num_kv_heads  # SDPA repeats KV heads in repeat_interleave order
        if isinstance(at, StaticPosition):
            # Written in place and attended over the whole capacity, masked: the same shapes every step.
            k_cache.index_copy_(2, at.pos, k)
            v_cache.index_copy_(2, at.pos, v)
            out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=at.valid, enable_gqa=gqa)
            return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))
        end = at + s
        k_cache[:, :, at:end] = k
        v_cache[:, :, at:end] = v
        # Attending to exactly the written prefix is the reference's masked full-length cache, minus the
        # masked-out slots; a single query needs no mask at all.
        mask, causal = None, False
        if s > 1 and at == 0:
            causal = True
        elif s > 1:
            mask = torch.ones(s, end, dtype=torch.bool, device=x.device).tril(diagonal=at)
        out = F.scaled_dot_product_attention(
            q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask, is_causal=causal, enable_gqa=gqa
        )
        return self.output_proj(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Layer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.sa_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg.embed_dim, cfg.intermediate_dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        at: At,
    ) -> torch.Tensor:
        h = self.attn(self.sa_norm(x), cos, sin, k_cache, v_cache, at) + x
        return h + self.mlp(self.mlp_norm(h))


class Transformer(nn.Module):
    """torchtune's TransformerDecoder without token embedding and output layer: embeddings in, float32 out."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.embed_dim, cfg.norm_eps)
        self.rebuild_buffers()

    def rebuild_buffers(self) -> None:
        """The RoPE table, built eagerly (docs/HEARTMULA.md §7.6) on the weights' device; it is not in the state dict."""
        device = self.norm.scale.device
        freqs = llama3_frequencies(self.cfg.head_dim, self.cfg.rope_base, self.cfg.scale_factor)
        cos, sin = rope_table(freqs, self.cfg.max_seq_len)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"{capacity} positions exceed the context of {self.cfg.max_seq_len}")
        return KVCache(self.cfg, batch, capacity, self.norm.scale.dtype, self.norm.scale.device)

    def forward(self, h: torch.Tensor, cache: KVCache, at: At) -> torch.Tensor:
        if isinstance(at, StaticPosition):
            cos, sin = self.rope_cos.index_select(0, at.pos), self.rope_sin.index_select(0, at.pos)
        else:
            cos, sin = self.rope_cos[at : at + h.shape[1]], self.rope_sin[at : at + h.shape[1]]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache.k[i], cache.v[i], at)
        return self.norm(h).float()


@dataclass
class LMOutput:
    frames: torch.Tensor  # [K, T] int32: the conditional row's codes, EOS frame excluded
    calls: int  # frame steps run (T, plus the dropped EOS frame and any steps past it)
    stopped_on_eos: bool


class HeartMuLa(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bb, dec = cfg.backbone, cfg.decoder
        k, v = cfg.audio_num_codebooks, cfg.audio_vocab_size
        self.backbone = Transformer(bb)
        self.decoder = Transformer(dec)
        self.text_embeddings = nn.Embedding(cfg.text_vocab_size, bb.embed_dim)
        self.audio_embeddings = nn.Embedding(v * k, bb.embed_dim)
        self.unconditional_text_embedding = nn.Embedding(1, bb.embed_dim)
        self.muq_linear = nn.Linear(cfg.muq_dim, bb.embed_dim)
        self.projection = nn.Linear(bb.embed_dim, dec.embed_dim, bias=False)
        self.codebook0_head = nn.Linear(bb.embed_dim, v, bias=False)
        # Used as `h @ audio_head[i]`, i.e. [in, out], unlike a Linear weight.
        self.audio_head = nn.Parameter(torch.randn(k - 1, dec.embed_dim, v) * dec.embed_dim**-0.5)
        self.rebuild_buffers()

    def rebuild_buffers(self) -> None:
        """Recomputes the non-persistent buffers after the weights were assigned (e.g. from meta tensors)."""
        self.backbone.rebuild_buffers()
        self.decoder.rebuild_buffers()
        offsets = torch.arange(self.cfg.audio_num_codebooks) * self.cfg.audio_vocab_size
        self.register_buffer("codebook_offsets", offsets.to(self.audio_head.device), persistent=False)

    def compile_transformers(self) -> None:
        """Opt-in `torch.compile` of the backbone and decoder, with dynamic shapes since the attended KV
        prefix grows every frame. Fuses the small elementwise ops (norms, RoPE, SiLU) that dominate the
        kernel count of a frame step on a GPU. Checked on the CPU to give identical frames; the first
        request pays the compilation."""
        self.backbone.compile(dynamic=True)
        self.decoder.compile(dynamic=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.audio_head.dtype

    @property
    def device(self) -> torch.device:
        return self.audio_head.device

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor, uncond: bool) -> torch.Tensor:
        """Sum of the masked slot embeddings (docs/HEARTMULA.md §2.2); with `uncond`, row 1 gets the unconditional text."""
        b, s, _ = tokens.shape
        k = self.cfg.audio_num_codebooks
        text = self.text_embeddings(tokens[:, :, k])
        if uncond:
            text[1:] = self.unconditional_text_embedding.weight[0]
        audio = self.audio_embeddings(tokens[:, :, :k] + self.codebook_offsets).view(b, s, k, -1)
        slots = torch.cat([audio, text[:, :, None]], dim=2)
        return (slots * mask[..., None]).sum(dim=2)

    def codebook_logits(self, h: torch.Tensor, codebook: int) -> torch.Tensor:
        """Logits `[B, V]` of one codebook: codebook 0 from the backbone state, the others from the decoder's."""
        if codebook == 0:
            return self.codebook0_head(h.to(self.dtype))
        return torch.mm(h.to(self.dtype), self.audio_head[codebook - 1])

    def prompt_embedding(self, prompt: Prompt, batch: int, guided: bool) -> torch.Tensor:
        """The first step's input `[B, L, D]`: the prompt's slots, with the MuQ (reference audio) row."""
        tokens = prompt.tokens.to(self.device)[None].expand(batch, -1, -1)
        mask = prompt.mask.to(self.device)[None].expand(batch, -1, -1)
        h = self.embed(tokens, mask, uncond=guided)
        # No reference audio, so the projection of a zero vector.
        muq = self.muq_linear(torch.zeros(batch, self.cfg.muq_dim, dtype=self.dtype, device=self.device))
        if guided:
            muq[1:] = self.unconditional_text_embedding.weight[0]
        h[:, prompt.muq_idx] = muq
        return h

    def frame_inputs(self, batch: int, empty_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token and mask buffers `[B, 1, 9]` of an audio frame step: the codes go in slots 0..7."""
        k = self.cfg.audio_num_codebooks
        tokens = torch.full((batch, 1, k + 1), empty_id, dtype=torch.long, device=self.device)
        mask = torch.ones(batch, 1, k + 1, dtype=torch.bool, device=self.device)
        mask[..., k] = False  # the text slot is off in audio frames
        return tokens, mask

    @torch.inference_mode()
    def generate(
        self,
        prompt: Prompt,
        *,
        n_steps: int,
        cfg_scale: float,
        sampler: Sampler,
        stop_id: int,
        empty_id: int,
        eos_check_every: int = 1,
        on_frame: FrameHook | None = None,
    ) -> LMOutput:
        """The reference `_forward`, eagerly: a prompt step then `n_steps` frame steps, stopping at the first
        frame (after the first) with any code >= stop_id. `eos_check_every` > 1 batches that check, trading
        up to that many wasted steps for fewer host syncs on GPU; the result is the same."""
        batch, guidance = cfg_rows(cfg_scale)
        length = prompt.tokens.shape[0]
        k = self.cfg.audio_num_codebooks
        caches = (self.backbone.new_cache(batch, length + n_steps + 1), self.decoder.new_cache(batch, k))
        step = FrameStep(self, caches, sampler, guidance)
        cur = step(self.prompt_embedding(prompt, batch, guidance is not None), 0)

        total = n_steps + 1
        frames = torch.empty(total, k, dtype=torch.int32, device=self.device)
        is_eos = torch.zeros(total, dtype=torch.bool, device=self.device)
        frames[0] = cur[0]
        step_tokens, step_mask = self.frame_inputs(batch, empty_id)
        eos = EosWatch(total, eos_check_every, on_frame)
        for i in range(n_steps):
            step_tokens[:, 0, :k] = cur
            cur = step(self.embed(step_tokens, step_mask, uncond=guidance is not None), length + i)
            frames[i + 1] = cur[0]
            is_eos[i + 1] = (cur[0] >= stop_id).any()
            end = eos.after_frame(i + 2, is_eos)
            if end is not None:
                return LMOutput(frames[:end].T.contiguous(), calls=i + 2, stopped_on_eos=True)
        return LMOutput(frames.T.contiguous(), calls=total, stopped_on_eos=False)


def cfg_rows(cfg_scale: float) -> tuple[int, float | None]:
    """Batch size and guidance of a request: two rows unless cfg is exactly 1, mixed only when cfg > 1."""
    batch = 2 if cfg_scale != 1.0 else 1
    return batch, cfg_scale if cfg_scale > 1.0 and batch > 1 else None


class EosWatch:
    """The frame loop's bookkeeping after each frame: progress, and every `every` frames the one host sync
    that looks for an EOS frame among those not checked yet (the first frame is never checked)."""

    def __init__(self, total: int, every: int, on_frame: FrameHook | None) -> None:
        self.total = total
        self.every = every
        self.on_frame = on_frame
        self.checked = 1
        if on_frame:
            on_frame(1, total)

    def after_frame(self, done: int, is_eos: torch.Tensor) -> int | None:
        """`done` frames exist; returns the song's length in frames when an EOS frame was found."""
        if self.on_frame:
            self.on_frame(done, self.total)
        if done - self.checked >= self.every or done == self.total:
            hits = is_eos[self.checked : done].nonzero()
            if hits.numel():
                return self.checked + int(hits[0])
            self.checked = done
        return None


class FrameStep:
    """`generate_frame` of the reference: backbone step, codebook 0 from its head, codebooks 1..K-1 from
    the local decoder, each sampled (with CFG mixing) before the next is embedded. Shapes depend only on
    the input's length, and the decoder's positions are the same every frame, so a step at a
    StaticPosition can be captured as a CUDA graph."""

    def __init__(
        self, model: HeartMuLa, caches: tuple[KVCache, KVCache], sampler: Sampler, guidance: float | None
    ) -> None:
        self.model = model
        self.backbone_cache, self.decoder_cache = caches
        self.sampler = sampler
        self.guidance = guidance

    def __call__(self, h: torch.Tensor, at: At) -> torch.Tensor:
        m = self.model
        last = m.backbone(h, self.backbone_cache, at)[:, -1]
        token = self._pick(m.codebook_logits(last, 0), 0)
        codes = [token]
        # The decoder restarts every frame at position 0: the backbone state, then codebook 0's embedding.
        x = torch.cat([last[:, None].to(m.dtype), m.audio_embeddings(token)], dim=1)
        position = 0
        for i in range(1, m.cfg.audio_num_codebooks):
            d = m.decoder(m.projection(x), self.decoder_cache, position)[:, -1]
            token = self._pick(m.codebook_logits(d, i), i)
            codes.append(token)
            position += x.shape[1]
            x = m.audio_embeddings(token + i * m.cfg.audio_vocab_size)
        return torch.cat(codes, dim=1)

    def _pick(self, logits: torch.Tensor, codebook: int) -> torch.Tensor:
        logits = logits.float()
        if self.guidance is None:
            return self.sampler(logits, codebook)
        cond, uncond = logits[:1], logits[1:]
        mixed = uncond + (cond - uncond) * self.guidance  # this exact op order gives bit-exact frames
        return self.sampler(mixed, codebook).repeat(logits.shape[0], 1)
