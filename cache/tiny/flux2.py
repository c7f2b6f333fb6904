"""A tiny FLUX.2 [klein]-shaped diffusers pipeline with random weights, built offline.

black-forest-labs/FLUX.2-klein-4B's layout and module names (double- and single-stream blocks without guidance
embedding, a 32-channel VAE whose latents are 2x2-patchified and batch-normed, a Qwen3 causal LM whose hidden
states 9, 18 and 27 are stacked into the text features, a dynamically shifted flow-matching Euler scheduler, the
step-distilled flag), shrunk. Its outputs are noise.
"""

from __future__ import annotations

from pathlib import Path

from cache.tiny.qwen3 import tiny_qwen3_config, write_qwen_tokenizer

SEED = 20260103
# FLUX.2-klein-4B's transformer/config.json; in_channels = 4 x the VAE's latent channels, joint_attention_dim =
# 3 stacked text layers x the text encoder's width, head dim = the sum of the rope axes
TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}
TINY_LATENT_CHANNELS = 8
TINY_TRANSFORMER = {
    **TRANSFORMER,
    "in_channels": 4 * TINY_LATENT_CHANNELS,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "timestep_guidance_channels": 32,
    "axes_dims_rope": (4, 4, 4, 4),
}
# AutoencoderKLFlux2's defaults are the released VAE's config
VAE = {"latent_channels": 32, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2}
TINY_VAE = {
    "latent_channels": TINY_LATENT_CHANNELS,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
}
SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
TEXT_LAYERS = (9, 18, 27)  # Flux2KleinPipeline's default `text_encoder_out_layers`


def build(dest: Path) -> None:
    """Write the tiny pipeline in diffusers' folder layout (safetensors) into `dest`."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    dest = Path(dest)
    torch.manual_seed(SEED)
    tokenizer = write_qwen_tokenizer(dest / "tokenizer")
    # the pipeline's own layer picks need 28 layers; at width 32 they cost little
    text_encoder = Qwen3ForCausalLM(tiny_qwen3_config(len(tokenizer), num_hidden_layers=max(TEXT_LAYERS) + 1))
    width = text_encoder.config.hidden_size
    transformer = Flux2Transformer2DModel(
        **{**TINY_TRANSFORMER, "joint_attention_dim": len(TEXT_LAYERS) * width}
    )
    pipeline = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=AutoencoderKLFlux2(**TINY_VAE),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=True,
    )
    pipeline.save_pretrained(dest, safe_serialization=True)
