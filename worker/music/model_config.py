"""Typed configurations of HeartMuLa (LM) and HeartCodec, parsed from the checkpoints' JSON files.

An LM flavor is a name in the official checkpoints (`"llama-3B"`); its dimensions come from the table of
docs/HEARTMULA.md §1.2. A config may instead give the dimensions explicitly as a dict of the same llama3_2 builder
arguments, which is how tiny test checkpoints describe themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file is malformed or describes a model this implementation cannot run."""


@dataclass(frozen=True)
class TransformerConfig:
    """Dimensions of one Llama-3.2 style transformer (backbone or local decoder)."""

    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    intermediate_dim: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_base: float = 500_000.0
    scale_factor: float = 32.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_builder_args(cls, args: Mapping[str, Any]) -> TransformerConfig:
        """Reads torchtune `llama3_2(...)` keyword arguments; vocab_size and attn_dropout do not matter."""
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = sorted(required - args.keys())
        if missing:
            raise ConfigError(f"flavor dimensions lack {', '.join(missing)}")
        if float(args.get("attn_dropout", 0.0)) != 0.0:
            raise ConfigError("attn_dropout must be 0 for inference")
        return cls(**{k: v for k, v in args.items() if k in known})


def _flavor(
    layers: int, dim: int, heads: int, kv_heads: int, ffn: int, max_seq_len: int
) -> TransformerConfig:
    return TransformerConfig(layers, dim, heads, kv_heads, ffn, max_seq_len)


# docs/HEARTMULA.md §1.2. Every flavor uses rope_base 500000, RoPE scale factor 32 and norm_eps 1e-5 (the defaults).
FLAVORS: dict[str, TransformerConfig] = {
    "llama-3B": _flavor(28, 3072, 24, 8, 8192, 8192),
    "llama-300M": _flavor(3, 3072, 8, 4, 8192, 2048),
    "llama-7B": _flavor(32, 4096, 32, 8, 14336, 8192),
    "llama-400M": _flavor(4, 3072, 8, 4, 8192, 2048),
}


def resolve_flavor(
    value: str | Mapping[str, Any], extra: Mapping[str, Mapping[str, Any]] | None = None
) -> TransformerConfig:
    """A flavor name (looked up in `extra` first, then in FLAVORS) or explicit builder arguments."""
    if isinstance(value, Mapping):
        return TransformerConfig.from_builder_args(value)
    if extra and value in extra:
        return TransformerConfig.from_builder_args(extra[value])
    if value in FLAVORS:
        return FLAVORS[value]
    known = sorted(FLAVORS) + sorted(extra or ())
    raise ConfigError(
        f"unknown flavor {value!r} (known: {', '.join(known)}); give the dimensions explicitly in "
        "config.json "
        "as a dict of llama3_2 builder arguments (num_layers, embed_dim, num_heads, num_kv_heads, "
        "intermediate_dim, max_seq_len)"
    )


@dataclass(frozen=True)
class LMConfig:
    """HeartMuLa-oss-<version>/config.json."""

    backbone: TransformerConfig
    decoder: TransformerConfig
    text_vocab_size: int = 128256
    audio_vocab_size: int = 8197
    audio_num_codebooks: int = 8
    muq_dim: int = 512

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], flavors: Mapping[str, Mapping[str, Any]] | None = None
    ) -> LMConfig:
        for key in ("backbone_flavor", "decoder_flavor"):
            if key not in d:
                raise ConfigError(f"LM config.json lacks {key!r}")
        optional = {f.name for f in fields(cls)} - {"backbone", "decoder"}
        return cls(
            backbone=resolve_flavor(d["backbone_flavor"], flavors),
            decoder=resolve_flavor(d["decoder_flavor"], flavors),
            **{k: int(d[k]) for k in optional if k in d},
        )


@dataclass(frozen=True)
class CodecConfig:
    """HeartCodec-oss/config.json: the fields used at decode time; the defaults are the released model's."""

    dim: int = 512
    codebook_size: int = 8192
    codebook_dim: int = 32
    num_quantizers: int = 8
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    num_layers: int = 24
    num_layers_2: int = 6
    in_channels: int = 1024
    out_channels: int = 256
    sample_rate: int = 48000
    num_samples: int = 2
    upsample_factors: tuple[int, ...] = (5, 4, 4, 4, 3)
    upsample_kernel_sizes: tuple[int, ...] = (10, 8, 8, 8, 6)
    latent_hidden_dim: int = 128
    init_channel: int = 64
    res_kernel_size: int = 7
    default_kernel_size: int = 7
    delay_kernel_size: int = 5
    causal: bool = True
    num_bands: int = 1

    def __post_init__(self) -> None:
        # Values the reference hard-codes elsewhere (docs/HEARTMULA.md §1.3); a config that breaks them cannot be decoded.
        checks = {
            "out_channels == 256": self.out_channels == 256,
            "latent_hidden_dim == 128": self.latent_hidden_dim == 128,
            "sample_rate == 48000": self.sample_rate == 48000,
            "prod(upsample_factors) * num_samples == 1920": math.prod(self.upsample_factors)
            * self.num_samples
            == 1920,
            "in_channels == 2 * out_channels + dim": self.in_channels == 2 * self.out_channels + self.dim,
            "upsample_kernel_sizes == 2 * upsample_factors": tuple(2 * f for f in self.upsample_factors)
            == tuple(self.upsample_kernel_sizes),
            "causal": self.causal,
            "num_bands == 1": self.num_bands == 1,
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise ConfigError(f"unsupported HeartCodec config: requires {', '.join(broken)}")

    @property
    def dit_dim(self) -> int:
        """Width of the first DiT stack (D1); the second runs at twice this width."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def samples_per_latent(self) -> int:
        return math.prod(self.upsample_factors) * self.num_samples

    def channels(self, j: int) -> int:
        """c_j of docs/HEARTMULA.md §4.1: decoder channel count at depth j (c_5 right after the first conv)."""
        return self.init_channel * 2**j

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CodecConfig:
        # Training-only fields (decay, commitment_weight, ...) and HF metadata are ignored.
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def mlp_width(dim: int) -> int:
    """M(D) of docs/HEARTMULA.md §4.1: the DiT feed-forward width, 8/3·D rounded up to a multiple of 256."""
    return 256 * math.ceil((8 * dim // 3) / 256)


@dataclass(frozen=True)
class GenConfig:
    """gen_config.json: the four special ids the pipeline needs."""

    text_bos_id: int
    text_eos_id: int
    audio_eos_id: int
    empty_id: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenConfig:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ConfigError(f"gen_config.json lacks {', '.join(missing)}")
        return cls(**{n: int(d[n]) for n in names})


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); download the file again") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data
