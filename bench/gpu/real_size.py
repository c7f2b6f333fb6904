"""Production-sized SDXL and HeartMuLa folders with random weights, built from the real configs (no hub).

`build(root, size, device)` writes `<root>/sdxl-base/` (the diffusers layout of stabilityai/
stable-diffusion-xl-base-1.0 with only its fp16 variant files, as the catalog downloads it) and `<root>/heartmula/`
(the official HeartMuLa layout: LM 3B + HeartCodec in float32 shards, as released). `size="tiny"` writes the
test models of `cache/tiny` instead, so the CPU smoke run goes through the same steps. The real-size folders take
about 28 GB; they are built once per root (a marker file records it) and reused by the CUDA tests and the load
bench. The tokenizers are the tiny byte-level ones (the real vocabularies are downloads); the embedding tables keep
the real vocabulary sizes, so every weight has its production shape and byte count.

    python bench/gpu/real_size.py --root DIR [--size real|tiny] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = ".built.json"
SEED = 20261201
SHARD_BYTES = 5 * 2**30  # the official HeartMuLa shards are about this size

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (every field that shapes the model)
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
# vae/config.json
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder/config.json (CLIP ViT-L/14) and text_encoder_2/config.json (OpenCLIP ViT-bigG/14)
SDXL_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
SDXL_TEXT_2: dict[str, Any] = {
    **SDXL_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
# HeartMuLa-oss-3B/config.json: the flavors are names the loader resolves to the released dimensions
HEARTMULA_LM = {
    "architectures": ["HeartMuLa"],
    "model_type": "heartmula",
    "backbone_flavor": "llama-3B",
    "decoder_flavor": "llama-300M",
    "text_vocab_size": 128256,
    "audio_vocab_size": 8197,
    "audio_num_codebooks": 8,
    "muq_dim": 512,
}
AUDIO_EOS_ID = 8193
CODEBOOK_SIZE = 8192


def build_sdxl(dest: Path, device: str) -> None:
    """The SDXL base pipeline at its real size, fp16 variant files only (what the catalog fetches)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cache.tiny.sdxl import SCHEDULER, write_clip_tokenizer

    vocab = write_clip_tokenizer(dest / "tokenizer")
    write_clip_tokenizer(dest / "tokenizer_2")
    # The tiny tokenizer's ids: CLIP pools at the end-of-text id, so the config must name the tokenizer's own.
    ids = {"bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": vocab - 1}
    torch.manual_seed(SEED)
    # Drawn on the device: 3.5 B random parameters take minutes on a CPU and seconds on a GPU.
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2, **ids))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(dest / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(dest / "tokenizer_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    pipe.to(torch.float16).save_pretrained(dest, safe_serialization=True, variant="fp16")


def _byte_tokenizer(path: Path) -> tuple[int, int]:
    """A byte-level BPE tokenizer with the Llama-3 special tokens; returns their (bos, eos) ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tokenizer.add_special_tokens([bos, eos])
    bos_id, eos_id = tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B:1", special_tokens=[(bos, bos_id)]
    )
    tokenizer.save(str(path))
    return bos_id, eos_id


def save_sharded(folder: Path, tensors: dict[str, Any], shard_bytes: int = SHARD_BYTES) -> None:
    """Safetensors shards of at most `shard_bytes` each plus `model.safetensors.index.json`, as released."""
    from safetensors.torch import save_file

    groups: list[list[str]] = [[]]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map: dict[str, str] = {}
    for index, keys in enumerate(groups, start=1):
        name = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
        save_file(
            {k: tensors[k].contiguous().cpu() for k in keys}, str(folder / name), metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def build_heartmula(dest: Path, device: str) -> None:
    """HeartMuLa-oss-3B + HeartCodec at their released sizes, float32 on disk as released."""
    import torch

    from worker.music.codec import HeartCodec
    from worker.music.lm import HeartMuLa
    from worker.music.model_config import CodecConfig, LMConfig

    lm_dir, codec_dir = dest / "HeartMuLa-oss-3B", dest / "HeartCodec-oss"
    lm_dir.mkdir(parents=True, exist_ok=True)
    codec_dir.mkdir(parents=True, exist_ok=True)
    bos_id, eos_id = _byte_tokenizer(dest / "tokenizer.json")
    gen = {"text_bos_id": bos_id, "text_eos_id": eos_id, "audio_eos_id": AUDIO_EOS_ID, "empty_id": 0}
    (dest / "gen_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")
    (lm_dir / "config.json").write_text(json.dumps(HEARTMULA_LM, indent=2), encoding="utf-8")
    torch.manual_seed(SEED)
    with torch.device(device):
        lm = HeartMuLa(LMConfig.from_dict(HEARTMULA_LM))
        with torch.no_grad():
            # Random heads would sample the special ids (end of song, ids past the codebook) now and then;
            # zero logits for them keep every song at its requested length, as the tiny model does.
            lm.codebook0_head.weight[CODEBOOK_SIZE:] = 0
            lm.audio_head[..., CODEBOOK_SIZE:] = 0
        save_sharded(lm_dir, lm.state_dict())
        del lm
        codec_cfg = CodecConfig()
        codec = HeartCodec(codec_cfg)
        save_sharded(codec_dir, codec.state_dict())
        del codec
    config = {"architectures": ["HeartCodec"], "model_type": "heartcodec", **asdict(codec_cfg)}
    (codec_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(root: Path, size: str = "real", device: str = "cuda") -> dict[str, Path]:
    """`{"sdxl-base": folder, "heartmula": folder}` under `root`, built unless the marker says they are."""
    root = Path(root)
    folders = {"sdxl-base": root / "sdxl-base", "heartmula": root / "heartmula"}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("size") == size:
        return folders
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        from cache.tiny import heartmula, sdxl

        sdxl.build(folders["sdxl-base"])
        heartmula.build(folders["heartmula"])
    else:
        build_sdxl(folders["sdxl-base"], device)
        build_heartmula(folders["heartmula"], device)
    marker.write_text(json.dumps({"size": size}), encoding="utf-8")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    started = time.perf_counter()
    folders = build(args.root, args.size, args.device)
    figures = {name: round(tree_bytes(folder) / 2**30, 2) for name, folder in folders.items()}
    result = {
        "build_s": round(time.perf_counter() - started, 1),
        **{f"{k}_gib": v for k, v in figures.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
