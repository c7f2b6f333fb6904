"""A tiny Z-Image-shaped diffusers pipeline with random weights, built offline.

Tongyi-MAI/Z-Image-Turbo's layout and module names (a single-stream DiT with noise and context refiners, 2x2
patches over a 16-channel 8x VAE, a Qwen3 text encoder and Qwen2 tokenizer, a shifted flow-matching Euler
scheduler), shrunk: so the loading, LoRA and key-conversion code that serves the real model runs unchanged. Its
outputs are noise.
"""

from __future__ import annotations

from pathlib import Path

from cache.tiny.qwen3 import tiny_qwen3_config, write_qwen_tokenizer

SEED = 20260102
# Tongyi-MAI/Z-Image-Turbo's transformer/config.json; the tiny keeps patching, channels, refiners, norms and rope
# layout, and shrinks width and depth (head dim 32 = the rope axes' sum, as 128 = 32 + 48 + 48 in the real one)
TRANSFORMER = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}
TINY_TRANSFORMER = {
    **TRANSFORMER,
    "dim": 64,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "axes_dims": [8, 12, 12],
    "axes_lens": [256, 128, 128],
}
# its vae/config.json: an SD3-style 16-channel VAE without quant convs
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "mid_block_add_attention": True,
}
TINY_VAE = {**VAE, "block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8}
# its scheduler/scheduler_config.json: a fixed shift, no resolution-dependent shifting
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}


def build(dest: Path) -> None:
    """Write the tiny pipeline in diffusers' folder layout (safetensors) into `dest`."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Model

    dest = Path(dest)
    torch.manual_seed(SEED)
    tokenizer = write_qwen_tokenizer(dest / "tokenizer")
    # Z-Image reads the second-to-last hidden state, so two layers are the least that exercises it
    text_encoder = Qwen3Model(tiny_qwen3_config(len(tokenizer), num_hidden_layers=2))
    transformer = ZImageTransformer2DModel(
        **{**TINY_TRANSFORMER, "cap_feat_dim": text_encoder.config.hidden_size}
    )
    pipeline = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=AutoencoderKL(**TINY_VAE),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipeline.save_pretrained(dest, safe_serialization=True)
