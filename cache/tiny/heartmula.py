"""A tiny random-weight HeartMuLa checkpoint in the official layout, for tests and the demo profile.

`build(dest)` writes, deterministically (fixed seed, ~4 MB):
```
dest/HeartMuLa-oss-tiny/   config.json (explicit flavor dimensions), 2 shards + model.safetensors.index.json
dest/HeartCodec-oss/       config.json, model.safetensors (weight norm as weight_g/weight_v, plus unused
                           encoder and VQ training tensors as in the real file)
dest/tokenizer.json        byte-level BPE (256 byte tokens), <|begin_of_text|>/<|end_of_text|>, BOS template
dest/gen_config.json
```
The key names and shapes follow the official checkpoints (docs/HEARTMULA.md §1.5); they are written out here on
purpose rather than taken from our modules, so that loading this checkpoint checks our loader against the
official layout. The codec keeps the real hard-coded invariants: 256 latent channels split 2×128, 1920
samples per latent frame, 48 kHz. The outputs are noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

VERSION = "tiny"
SEED = 20260305

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
TEXT_VOCAB = 258  # 256 byte tokens + BOS + EOS
CODEBOOKS = 8
CODEBOOK_SIZE = 256
AUDIO_VOCAB = CODEBOOK_SIZE + 5  # as the real 8192 + 5
MUQ_DIM = 512

_FLAVOR_DEFAULTS = {"attn_dropout": 0.0, "norm_eps": 1e-5, "rope_base": 500000, "scale_factor": 32}
# The backbone keeps the real 8192-position context, so request limits match the 3B model's.
BACKBONE = {
    "vocab_size": TEXT_VOCAB,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "embed_dim": 64,
    "max_seq_len": 8192,
    "intermediate_dim": 160,
    **_FLAVOR_DEFAULTS,
}
DECODER = {
    "vocab_size": TEXT_VOCAB,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 1,
    "embed_dim": 48,
    "max_seq_len": 64,
    "intermediate_dim": 96,
    **_FLAVOR_DEFAULTS,
}

CODEC = {
    "architectures": ["HeartCodec"],
    "model_type": "heartcodec",
    "dim": 32,
    "codebook_size": CODEBOOK_SIZE,
    "codebook_dim": 8,
    "num_quantizers": CODEBOOKS,
    "decay": 0.9,
    "commitment_weight": 1.0,
    "threshold_ema_dead_code": 2,
    "use_cosine_sim": False,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "num_layers": 2,
    "num_layers_2": 2,
    "in_channels": 256 + 256 + 32,
    "out_channels": 256,
    "norm_type": "ada_norm_single",
    "num_bands": 1,
    "sample_rate": 48000,
    "causal": True,
    "num_samples": 2,
    "downsample_factors": [3, 4, 4, 4, 5],
    "downsample_kernel_sizes": [6, 8, 8, 8, 10],
    "upsample_factors": [5, 4, 4, 4, 3],
    "upsample_kernel_sizes": [10, 8, 8, 8, 6],
    "latent_hidden_dim": 128,
    "default_kernel_size": 7,
    "delay_kernel_size": 5,
    "init_channel": 2,
    "res_kernel_size": 7,
}


class _Weights:
    """Seeded tensor factory: every tensor depends only on the seed and the order of the calls."""

    def __init__(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}

    def normal(self, key: str, shape: tuple[int, ...], std: float) -> torch.Tensor:
        self.tensors[key] = torch.randn(shape, generator=self.rng) * std
        return self.tensors[key]

    def linear(self, key: str, out: int, inp: int, bias: bool = False) -> None:
        self.normal(f"{key}.weight", (out, inp), inp**-0.5)
        if bias:
            self.normal(f"{key}.bias", (out,), 0.02)

    def const(self, key: str, shape: tuple[int, ...], value: float) -> None:
        self.tensors[key] = torch.full(shape, value)


def _lm_weights() -> dict[str, torch.Tensor]:
    w = _Weights(SEED)
    d_bb, d_dec = BACKBONE["embed_dim"], DECODER["embed_dim"]
    w.normal("text_embeddings.weight", (TEXT_VOCAB, d_bb), 1.0)
    w.normal("audio_embeddings.weight", (AUDIO_VOCAB * CODEBOOKS, d_bb), 1.0)
    w.normal("unconditional_text_embedding.weight", (1, d_bb), 1.0)
    w.linear("muq_linear", d_bb, MUQ_DIM, bias=True)
    w.linear("projection", d_dec, d_bb)
    # Logits with std ~3; the rows of the special ids (>= CODEBOOK_SIZE) are zero, so with a usual top-k
    # they are never sampled and songs run to their requested length.
    head = w.normal("codebook0_head.weight", (AUDIO_VOCAB, d_bb), 3 * d_bb**-0.5)
    head[CODEBOOK_SIZE:] = 0
    audio_head = w.normal("audio_head", (CODEBOOKS - 1, d_dec, AUDIO_VOCAB), 3 * d_dec**-0.5)
    audio_head[..., CODEBOOK_SIZE:] = 0
    for name, flavor in (("backbone", BACKBONE), ("decoder", DECODER)):
        dim, heads, kv_heads = flavor["embed_dim"], flavor["num_heads"], flavor["num_kv_heads"]
        head_dim, ffn = dim // heads, flavor["intermediate_dim"]
        for layer in range(flavor["num_layers"]):
            p = f"{name}.layers.{layer}"
            w.const(f"{p}.sa_norm.scale", (dim,), 1.0)
            w.linear(f"{p}.attn.q_proj", heads * head_dim, dim)
            w.linear(f"{p}.attn.k_proj", kv_heads * head_dim, dim)
            w.linear(f"{p}.attn.v_proj", kv_heads * head_dim, dim)
            w.linear(f"{p}.attn.output_proj", dim, heads * head_dim)
            w.const(f"{p}.mlp_norm.scale", (dim,), 1.0)
            w.linear(f"{p}.mlp.w1", ffn, dim)
            w.linear(f"{p}.mlp.w3", ffn, dim)
            w.linear(f"{p}.mlp.w2", dim, ffn)
        w.const(f"{name}.norm.scale", (dim,), 1.0)
    return w.tensors


def _mlp_width(dim: int) -> int:
    return 256 * math.ceil((8 * dim // 3) / 256)


def _weight_norm(
    w: _Weights, key: str, shape: tuple[int, ...], bias_channels: int, gain: float = 1.0
) -> None:
    """A weight-normed conv in the older `weight_g`/`weight_v` form; the filters' norm is `gain`."""
    w.normal(f"{key}.weight_v", shape, 1.0)
    w.const(f"{key}.weight_g", (shape[0], 1, 1), gain)
    w.normal(f"{key}.bias", (bias_channels,), 0.02)


def _codec_weights() -> dict[str, torch.Tensor]:
    w = _Weights(SEED + 1)
    c = CODEC
    dim, cd, size = c["dim"], c["codebook_dim"], c["codebook_size"]
    fm = "flow_matching"
    for q in range(c["num_quantizers"]):
        p = f"{fm}.vq_embed.layers.{q}._codebook"
        w.normal(f"{p}.embed", (1, size, cd), 1.0)
        # Training state the real files carry; a loader must ignore it.
        w.normal(f"{p}.embed_avg", (1, size, cd), 1.0)
        w.const(f"{p}.cluster_size", (1, size), 1.0)
        w.tensors[f"{p}.initted"] = torch.tensor(True)
    w.linear(f"{fm}.vq_embed.project_in", cd, dim, bias=True)
    w.linear(f"{fm}.vq_embed.project_out", dim, cd, bias=True)
    w.linear(f"{fm}.cond_feature_emb", dim, dim, bias=True)
    w.normal(f"{fm}.zero_cond_embedding1", (dim,), 0.02)

    est = f"{fm}.estimator"
    d1 = c["num_attention_heads"] * c["attention_head_dim"]
    d2, cin = 2 * d1, c["in_channels"]

    def proj(key: str, inp: int, out: int) -> None:
        w.normal(f"{key}.ffn_1.weight", (out, inp, 3), (3 * inp) ** -0.5)
        w.normal(f"{key}.ffn_1.bias", (out,), 0.02)
        w.linear(f"{key}.ffn_2", out, out, bias=True)

    def stack(adaln: str, blocks: str, table: str, d: int, layers: int) -> None:
        w.linear(f"{est}.{adaln}.emb.timestep_embedder.linear_1", d, 512, bias=True)
        w.linear(f"{est}.{adaln}.emb.timestep_embedder.linear_2", d, d, bias=True)
        w.linear(f"{est}.{adaln}.linear", 6 * d, d, bias=True)
        for i in range(layers):
            p = f"{est}.{blocks}.{i}"
            w.const(f"{p}.attn_norm.weight", (d,), 1.0)
            w.const(f"{p}.mlp_norm.weight", (d,), 1.0)
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                w.linear(f"{p}.attn.{name}", d, d)
            w.linear(f"{p}.mlp.gate", _mlp_width(d), d)
            w.linear(f"{p}.mlp.up", _mlp_width(d), d)
            w.linear(f"{p}.mlp.down", d, _mlp_width(d))
            w.normal(f"{p}.scale_shift_table", (6, d), 0.1)
        w.normal(f"{est}.{table}", (2, d), 0.1)

    proj(f"{est}.proj_in", cin, d1)
    stack("adaln_single", "transformer_blocks", "scale_shift_table", d1, c["num_layers"])
    proj(f"{est}.connection_proj", cin + d1, d2)
    stack("adaln_single_2", "transformer_blocks_2", "scale_shift_table_2", d2, c["num_layers_2"])
    proj(f"{est}.proj_out", d2, c["out_channels"])

    dec = "scalar_model.decoder"
    ch = [c["init_channel"] * 2**j for j in range(6)]
    _weight_norm(w, f"{dec}.0", (ch[5], c["latent_hidden_dim"], 5), ch[5])
    for n, factor in enumerate(c["upsample_factors"], start=1):
        c_in, c_out = ch[6 - n], ch[5 - n]
        _weight_norm(w, f"{dec}.{n}.up_conv.layer", (c_in, c_out, 2 * factor), c_out)
        for j in range(5):
            p = f"{dec}.{n}.convs.{j}"
            _weight_norm(w, f"{p}.conv1", (c_out, c_out, 7), c_out)
            _weight_norm(w, f"{p}.conv2", (c_out, c_out, 1), c_out)
            w.const(f"{p}.activation1.weight", (1,), 0.25)
            w.const(f"{p}.activation2.weight", (1,), 0.25)
    w.normal(f"{dec}.6.conv.weight", (ch[0], ch[0], 7), (7 * ch[0]) ** -0.5)
    w.normal(f"{dec}.6.conv.bias", (ch[0],), 0.02)
    w.const(f"{dec}.6.activation.weight", (1,), 0.25)
    _weight_norm(w, f"{dec}.7", (1, ch[0], 7), 1, gain=0.02)  # output level around 0.2 rms
    # A stand-in for the audio encoder, which inference never uses.
    _weight_norm(w, "scalar_model.encoder.0", (ch[0], 1, 7), ch[0])
    return w.tensors


def _tokenizer() -> Tokenizer:
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([BOS, EOS])  # ids 256, 257
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_sharded(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    keys = sorted(tensors)
    per_shard = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i * per_shard : (i + 1) * per_shard]
        save_file({k: tensors[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def build(dest: Path) -> None:
    """Writes the tiny checkpoint into `dest` (created if needed; existing files are overwritten)."""
    dest = Path(dest)
    lm_dir, codec_dir = dest / f"HeartMuLa-oss-{VERSION}", dest / "HeartCodec-oss"
    lm_dir.mkdir(parents=True, exist_ok=True)
    codec_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _tokenizer()
    tokenizer.save(str(dest / "tokenizer.json"))
    _write_json(
        dest / "gen_config.json",
        {
            "text_bos_id": tokenizer.token_to_id(BOS),
            "text_eos_id": tokenizer.token_to_id(EOS),
            "audio_eos_id": CODEBOOK_SIZE + 1,
            "empty_id": 0,  # as the real 8193 = 8192 + 1
        },
    )

    _write_json(
        lm_dir / "config.json",
        {
            "architectures": ["HeartMuLa"],
            "model_type": "heartmula",
            "backbone_flavor": BACKBONE,
            "decoder_flavor": DECODER,
            "text_vocab_size": TEXT_VOCAB,
            "audio_vocab_size": AUDIO_VOCAB,
            "audio_num_codebooks": CODEBOOKS,
            "muq_dim": MUQ_DIM,
        },
    )
    _save_sharded(lm_dir, _lm_weights(), shards=2)

    _write_json(codec_dir / "config.json", CODEC)
    save_file(_codec_weights(), str(codec_dir / "model.safetensors"), metadata={"format": "pt"})
