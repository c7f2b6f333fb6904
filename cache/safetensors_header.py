"""What a `.safetensors` file holds, from its header alone: a readable file, and an SDXL checkpoint or a LoRA.

The worker calls `kind_problem` before loading a file a job named, so that a wrong file is a clear field error
(and not a shape error from deep inside diffusers); the cache calls `read_header` before publishing a single file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Literal

Want = Literal["checkpoint", "lora"]
FileKind = Literal["sdxl-checkpoint", "sd-checkpoint", "unet-only", "lora", "unknown"]

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_LORA_MARKS = ("lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down", "lora.up", ".hada_", ".lokr_")
_UNET = "model.diffusion_model."
_SDXL_TEXT = "conditioner.embedders.1.model."
_SD_TEXT = "cond_stage_model."


class HeaderError(ValueError):
    """The file is not a readable safetensors file; the message says why."""


def read_header(path: Path) -> dict:
    """The tensor entries of `path` (name -> dtype, shape, data_offsets), checked against the file's size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise HeaderError(f"{size} bytes is too short for a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise HeaderError(f"its header claims {length} bytes, more than the file holds")
            raw = f.read(length)
    except OSError as err:
        raise HeaderError(f"cannot be read ({err.strerror})") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HeaderError("its header is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise HeaderError("its header is not a JSON object")
    data_size = size - 8 - length
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise HeaderError(f"tensor {name!r} lies outside the file (truncated or not safetensors)")
    if not tensors:
        raise HeaderError("it holds no tensors")
    return tensors


def classify(tensors: dict) -> FileKind:
    keys = list(tensors)
    if any(mark in key for key in keys for mark in _LORA_MARKS):
        return "lora"
    if any(key.startswith(_UNET) for key in keys):
        if any(key.startswith(_SDXL_TEXT) for key in keys):
            return "sdxl-checkpoint"
        if any(key.startswith(_SD_TEXT) for key in keys):
            return "sd-checkpoint"
        return "unet-only"
    return "unknown"


_PROBLEMS: dict[tuple[Want, FileKind], str] = {
    ("checkpoint", "lora"): "is a LoRA, not an SDXL checkpoint (name it in loras instead)",
    ("checkpoint", "sd-checkpoint"): "is a Stable Diffusion 1.x/2.x checkpoint, not SDXL",
    ("checkpoint", "unet-only"): "holds a UNet only; a checkpoint needs the UNet, VAE and both text encoders",
    ("checkpoint", "unknown"): "is not an SDXL checkpoint (no model.diffusion_model.* tensors)",
    ("lora", "sdxl-checkpoint"): "is a full checkpoint, not a LoRA (name it as checkpoint instead)",
    ("lora", "sd-checkpoint"): "is a full Stable Diffusion checkpoint, not a LoRA",
    ("lora", "unet-only"): "is a UNet, not a LoRA",
    ("lora", "unknown"): "is not a LoRA (no lora_up/lora_down or lora_A/lora_B tensors)",
}


def kind_problem(path: Path, want: Want, kind: FileKind | None = None) -> str | None:
    """Why `path` cannot serve as `want`, or None. `kind`, when the cache recorded it, saves reading the header."""
    if kind is None:
        try:
            kind = classify(read_header(path))
        except HeaderError as err:
            return f"is not a readable safetensors file: {err}"
    return _PROBLEMS.get((want, kind))
