"""Write a diffusers SDXL folder as one ComfyUI-style `.safetensors` checkpoint (the original Stability key layout).

The inverse of diffusers' single-file conversion, for tests: it turns the tiny random SDXL into a checkpoint that
`from_single_file` loads, so the Morpheus `checkpoint_name` path runs on the same tiny weights.
"""

from __future__ import annotations

import json
from pathlib import Path

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
CLIP_G = "conditioner.embedders.1.model."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _unet_key(key: str, per_block: int, attention_blocks: set[int]) -> str:
    parts = key.split(".")
    head = parts[0]
    for diffusers, ldm in _UNET_TOP.items():
        if key.startswith(diffusers + "."):
            return ldm + key[len(diffusers) :]
    if head == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{_renamed(rest, _UNET_RESNET)}"
    block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    if head == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (per_block + 1)}.0.op.{parts[-1]}"
        slot = 1 + block * (per_block + 1) + index
        return (
            f"input_blocks.{slot}.1.{rest}"
            if kind == "attentions"
            else f"input_blocks.{slot}.0.{_renamed(rest, _UNET_RESNET)}"
        )
    slot = block * (per_block + 1) + index
    if kind == "upsamplers":
        last = block * (per_block + 1) + per_block
        return f"output_blocks.{last}.{2 if block in attention_blocks else 1}.conv.{parts[-1]}"
    return (
        f"output_blocks.{slot}.1.{rest}"
        if kind == "attentions"
        else f"output_blocks.{slot}.0.{_renamed(rest, _UNET_RESNET)}"
    )


def _renamed(rest: str, names: dict[str, str]) -> str:
    for diffusers, ldm in names.items():
        if rest.startswith(diffusers + "."):
            return ldm + rest[len(diffusers) :]
    return rest


def _vae_key(key: str, up_blocks: int) -> str:
    side, _, rest = key.partition(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    parts = rest.split(".")
    if parts[0] in ("down_blocks", "up_blocks"):
        block = int(parts[1])
        ldm_block = block if parts[0] == "down_blocks" else up_blocks - 1 - block
        where = "down" if parts[0] == "down_blocks" else "up"
        if parts[2] in ("downsamplers", "upsamplers"):
            sampler = "downsample" if where == "down" else "upsample"
            return f"{side}.{where}.{ldm_block}.{sampler}.{'.'.join(parts[4:])}"
        resnet = _renamed(".".join(parts[4:]), {"conv_shortcut": "nin_shortcut"})
        return f"{side}.{where}.{ldm_block}.block.{parts[3]}.{resnet}"
    if parts[0] == "mid_block":
        if parts[1] == "attentions":
            return f"{side}.mid.attn_1.{_renamed('.'.join(parts[3:]), _VAE_ATTENTION)}"
        resnet = _renamed(".".join(parts[3:]), {"conv_shortcut": "nin_shortcut"})
        return f"{side}.mid.block_{int(parts[2]) + 1}.{resnet}"
    return f"{side}.{_renamed(rest, _VAE_TOP)}"


def _open_clip(state: dict) -> dict:
    import torch

    out = {}
    layers: dict[int, dict[str, object]] = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("text_model.encoder.layers."):
            index, rest = key.split(".")[3], ".".join(key.split(".")[4:])
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                layers.setdefault(int(index), {})[rest.split(".", 1)[1]] = value
            elif rest.startswith("self_attn.out_proj."):
                out[f"transformer.resblocks.{index}.attn.out_proj.{rest.rsplit('.', 1)[1]}"] = value
            else:
                out[f"transformer.resblocks.{index}.{_renamed(rest, _OPEN_CLIP)}"] = value
    for index, parts in layers.items():
        for kind in ("weight", "bias"):
            out[f"transformer.resblocks.{index}.attn.in_proj_{kind}"] = torch.cat(
                [parts[f"{p}_proj.{kind}"] for p in "qkv"]  # type: ignore[misc]
            )
    return out


def write_single_file(diffusers_dir: Path, dest: Path) -> Path:
    """Write `diffusers_dir` (an SDXL pipeline folder) as one checkpoint at `dest`; returns `dest`."""
    from safetensors.torch import load_file, save_file

    diffusers_dir = Path(diffusers_dir)
    unet_config = json.loads((diffusers_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((diffusers_dir / "vae" / "config.json").read_text())
    per_block = unet_config["layers_per_block"]
    attention_blocks = {i for i, t in enumerate(unet_config["up_block_types"]) if t.startswith("CrossAttn")}
    checkpoint = {}
    for key, value in load_file(diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors").items():
        checkpoint[UNET + _unet_key(key, per_block, attention_blocks)] = value
    for key, value in load_file(diffusers_dir / "vae" / "diffusion_pytorch_model.safetensors").items():
        if value.ndim == 2 and ".attentions." in key:  # the original VAE attention is 1x1 convolutions
            value = value[:, :, None, None]
        checkpoint[VAE + _vae_key(key, len(vae_config["up_block_types"]))] = value
    for key, value in load_file(diffusers_dir / "text_encoder" / "model.safetensors").items():
        # transformers >= 5.6 saves CLIPTextModel without its text_model. wrapper; the original layout has it
        checkpoint[CLIP_L + (key if key.startswith("text_model.") else f"text_model.{key}")] = value
    for key, value in _open_clip(load_file(diffusers_dir / "text_encoder_2" / "model.safetensors")).items():
        checkpoint[CLIP_G + key] = value
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, dest)
    return dest
