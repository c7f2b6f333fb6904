"""A tiny IP-Adapter with random weights for the tiny SDXL (`cache.tiny.sdxl`), built offline.

Same files as `h94/IP-Adapter`'s `sdxl_models/`: `ip-adapter_sdxl.bin` (a torch state dict with `image_proj` and
`ip_adapter` parts) and `image_encoder/` (a CLIPVisionModelWithProjection), so diffusers' `load_ip_adapter` takes
the same path as for the real adapter. Its outputs are noise.
"""

from __future__ import annotations

from pathlib import Path

SEED = 20260102
SUBFOLDER = "sdxl_models"
WEIGHT_NAME = "ip-adapter_sdxl.bin"
IMAGE_ENCODER = "image_encoder"

# The tiny SDXL UNet's attention layout (see cache/tiny/sdxl.py): every cross-attention layer the adapter hooks
# needs a key/value projection from the text width to that layer's width.
_CROSS_ATTENTION_DIM = 64
_BLOCK_OUT_CHANNELS = (32, 64, 64)
_HAS_CROSS_ATTENTION = (False, True, True)
_TRANSFORMER_DEPTH = (1, 1, 2)
_LAYERS_PER_BLOCK = 2
_IMAGE_TOKENS = 4  # the plain (non-"plus") IP-Adapter projects one image embedding to 4 tokens
_IMAGE_EMBED_DIM = 32


def _cross_attention_widths() -> list[int]:
    """The hidden width of each cross-attention layer, in the order diffusers numbers them (down, up, mid)."""
    widths: list[int] = []
    levels = list(zip(_BLOCK_OUT_CHANNELS, _HAS_CROSS_ATTENTION, _TRANSFORMER_DEPTH))
    for width, cross, depth in levels:
        if cross:
            widths += [width] * _LAYERS_PER_BLOCK * depth
    for width, cross, depth in reversed(levels):
        if cross:
            widths += [width] * (_LAYERS_PER_BLOCK + 1) * depth
    widths += [_BLOCK_OUT_CHANNELS[-1]] * _TRANSFORMER_DEPTH[-1]
    return widths


def build(dest: Path) -> None:
    """Write `sdxl_models/ip-adapter_sdxl.bin` and `sdxl_models/image_encoder/` into `dest`."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    dest = Path(dest) / SUBFOLDER
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=32,
            patch_size=8,
            projection_dim=_IMAGE_EMBED_DIM,
        )
    )
    encoder.save_pretrained(dest / IMAGE_ENCODER, safe_serialization=True)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape) * 0.02

    image_proj = {
        "proj.weight": weight(_CROSS_ATTENTION_DIM * _IMAGE_TOKENS, _IMAGE_EMBED_DIM),
        "proj.bias": torch.zeros(_CROSS_ATTENTION_DIM * _IMAGE_TOKENS),
        "norm.weight": torch.ones(_CROSS_ATTENTION_DIM),
        "norm.bias": torch.zeros(_CROSS_ATTENTION_DIM),
    }
    ip_adapter = {}
    # h94's numbering counts every attention processor, self- and cross-attention alike: cross-attention is odd
    for index, width in enumerate(_cross_attention_widths()):
        key = 2 * index + 1
        ip_adapter[f"{key}.to_k_ip.weight"] = weight(width, _CROSS_ATTENTION_DIM)
        ip_adapter[f"{key}.to_v_ip.weight"] = weight(width, _CROSS_ATTENTION_DIM)
    torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, dest / WEIGHT_NAME)
