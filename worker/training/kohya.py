"""Diffusers/PEFT LoRA weights → the kohya-ss file that ComfyUI, A1111/Forge and sd-scripts load.

kohya names an SDXL LoRA module after the original Stability (sgm) UNet, not the diffusers one:
`lora_unet_<sgm path, dots as underscores>` (`down_blocks.1.attentions.0` is `input_blocks.4.1`), and the text
encoders' modules `lora_te1_<path>` / `lora_te2_<path>`. Each module carries `.lora_down.weight` (PEFT's lora_A),
`.lora_up.weight` (lora_B) and a scalar `.alpha`; loaders scale by alpha / rank. ComfyUI builds exactly these
names from its own sgm state dict (comfy/lora.py `model_lora_keys_unet`), and diffusers maps them back
(`_maybe_map_sgm_blocks_to_diffusers`, `_convert_non_diffusers_lora_to_diffusers`).
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
SDXL_BASE_VERSION = "sdxl_base_v1-0"  # sd-scripts' MODEL_VERSION_SDXL_BASE_V1_0
MODELSPEC_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
MODELSPEC_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


def sgm_unet_path(diffusers_path: str, layers_per_block: int) -> str:
    """The sgm UNet path of a module inside one of the diffusers UNet's attention (transformer) blocks.

    sgm numbers the input blocks flat: block 0 is conv_in, then each level holds `layers_per_block` (res, attn)
    pairs and one downsampler; the output blocks hold `layers_per_block + 1` pairs per level; the attention sits
    at index 1 of its sgm block.
    """
    parts = diffusers_path.split(".")
    if len(parts) > 4 and parts[0] in ("down_blocks", "up_blocks") and parts[2] == "attentions":
        level, index = int(parts[1]), int(parts[3])
        if parts[0] == "down_blocks":
            head = f"input_blocks.{1 + (layers_per_block + 1) * level + index}.1"
        else:
            head = f"output_blocks.{(layers_per_block + 1) * level + index}.1"
        return ".".join([head, *parts[4:]])
    if parts[:3] == ["mid_block", "attentions", "0"] and len(parts) > 3:
        return ".".join(["middle_block.1", *parts[3:]])
    raise ValueError(f"no sgm name for UNet module {diffusers_path!r} (only transformer blocks are trained)")


def kohya_module_name(component: str, module_path: str, layers_per_block: int) -> str:
    """`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` for a diffusers module path."""
    if component == "unet":
        return UNET_PREFIX + sgm_unet_path(module_path, layers_per_block).replace(".", "_")
    return TEXT_ENCODER_PREFIXES[component] + module_path.replace(".", "_")


def to_kohya(
    peft_state: dict[str, dict[str, Any]], alpha: float, layers_per_block: int, dtype: Any = None
) -> dict[str, Any]:
    """kohya tensors from PEFT state dicts per component (`{"unet": {"<module>.lora_A.weight": ...}, ...}`)."""
    import torch

    tensors: dict[str, Any] = {}
    for component, state in peft_state.items():
        for key, down in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight")
            up = state[f"{module}.lora_B.weight"]
            name = kohya_module_name(component, module, layers_per_block)
            tensors[f"{name}.lora_down.weight"] = down.detach().to(dtype or down.dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = up.detach().to(dtype or up.dtype).contiguous()
            # the real alpha, so loaders scale by alpha/rank exactly as training did
            tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return tensors


@dataclass(frozen=True)
class TrainingRecord:
    """What the metadata says about a run."""

    name: str
    base_model: str
    rank: int
    alpha: float
    resolution: int
    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    max_steps: int
    steps_done: int
    batch_size: int
    mixed_precision: str
    gradient_checkpointing: bool
    cache_latents: bool
    caption_dropout: float
    train_text_encoder: bool
    seed: int
    max_grad_norm: float
    started_at: float
    captions: tuple[str, ...]
    trigger_word: str | None
    prediction_type: str
    optimizer: str = "torch.optim.adamw.AdamW"
    min_snr_gamma: float | None = None
    noise_offset: float = 0.0
    buckets: tuple[tuple[int, int], ...] = ()  # (width, height) of each image
    bucket_info: str | None = None


def _tag_frequency(captions: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """sd-scripts' ss_tag_frequency: comma-separated tags counted per dataset folder (we have one)."""
    counts = Counter(tag.strip() for caption in captions for tag in caption.split(",") if tag.strip())
    return {"dataset": dict(counts)}


def kohya_metadata(record: TrainingRecord) -> dict[str, str]:
    """The `ss_*` keys sd-scripts writes (A1111/Forge show them) and the `modelspec.*` keys of Stability's
    ModelSpec; safetensors metadata values are strings."""
    finished = datetime.now(UTC)
    metadata: dict[str, Any] = {
        "ss_session_id": secrets.randbelow(2**31),
        "ss_training_started_at": record.started_at,
        "ss_training_finished_at": finished.timestamp(),
        "ss_output_name": record.name,
        "ss_sd_model_name": record.base_model,
        "ss_base_model_version": SDXL_BASE_VERSION,
        "ss_v2": False,
        "ss_network_module": "networks.lora",
        "ss_network_dim": record.rank,
        "ss_network_alpha": record.alpha,
        "ss_network_train_unet_only": not record.train_text_encoder,
        "ss_resolution": f"({record.resolution}, {record.resolution})",
        "ss_learning_rate": record.learning_rate,
        "ss_unet_lr": record.learning_rate,
        "ss_text_encoder_lr": record.learning_rate if record.train_text_encoder else 0.0,
        "ss_lr_scheduler": record.lr_scheduler,
        "ss_lr_warmup_steps": record.warmup_steps,
        "ss_max_train_steps": record.max_steps,
        "ss_steps": record.steps_done,
        "ss_batch_size_per_device": record.batch_size,
        "ss_num_train_images": len(record.captions),
        "ss_mixed_precision": record.mixed_precision,
        "ss_gradient_checkpointing": record.gradient_checkpointing,
        "ss_cache_latents": record.cache_latents,
        "ss_caption_dropout_rate": record.caption_dropout,
        "ss_seed": record.seed,
        "ss_optimizer": record.optimizer,
        "ss_min_snr_gamma": record.min_snr_gamma,
        "ss_noise_offset": record.noise_offset or None,  # sd-scripts writes None when it is off
        "ss_max_grad_norm": record.max_grad_norm,
        "ss_tag_frequency": json.dumps(_tag_frequency(record.captions)),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE,
        "modelspec.implementation": MODELSPEC_IMPLEMENTATION,
        "modelspec.title": record.name,
        "modelspec.resolution": f"{record.resolution}x{record.resolution}",
        "modelspec.date": finished.strftime("%Y-%m-%dT%H:%M:%S"),
        "modelspec.prediction_type": record.prediction_type,
    }
    if record.buckets:
        sides = [side for size in record.buckets for side in size]
        metadata.update(
            ss_enable_bucket=True,
            ss_bucket_no_upscale=False,
            ss_min_bucket_reso=min(sides),
            ss_max_bucket_reso=max(sides),
            ss_bucket_info=record.bucket_info,
        )
    if record.trigger_word:
        metadata["modelspec.trigger_phrase"] = record.trigger_word
    return {key: str(value) for key, value in metadata.items()}
