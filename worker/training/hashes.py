"""The two LoRA hashes sd-scripts precomputes into the metadata (`sshs_model_hash`, `sshs_legacy_hash`), which
A1111's additional-networks extension and civitai show and match a LoRA by.

sd-scripts hashes the file as it would be saved with the training metadata only (the `ss_*` keys), so editing
other metadata later keeps the hashes: the model hash is the SHA-256 of everything after the header (the tensor
bytes), the legacy hash the first 8 hex digits of the SHA-256 of the 64 KiB at offset 1 MiB (of nothing, for a
file that small).
"""

from __future__ import annotations

import hashlib
from typing import Any

LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
_HEADER_LENGTH_BYTES = 8


def model_hash(data: bytes) -> str:
    """SHA-256 of a safetensors file's tensor bytes: what follows the 8-byte length and the JSON header."""
    header = int.from_bytes(data[:_HEADER_LENGTH_BYTES], "little")
    return hashlib.sha256(data[_HEADER_LENGTH_BYTES + header :]).hexdigest()


def legacy_hash(data: bytes) -> str:
    return hashlib.sha256(data[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]


def with_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` plus the two hashes of the file these tensors make with the `ss_*` metadata alone."""
    from safetensors.torch import save

    training = {key: value for key, value in metadata.items() if key.startswith("ss_")}
    data = save(tensors, metadata=training)
    return {**metadata, "sshs_model_hash": model_hash(data), "sshs_legacy_hash": legacy_hash(data)}
