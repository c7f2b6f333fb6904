"""The model cache on the network volume: one downloader per model, crash-safe, instant when warm.

Importing this package imports neither torch nor huggingface_hub (huggingface_hub reads HF_* variables at import,
and the worker sets them first).
"""

from .catalog import ModelSpec, Part
from .errors import (
    AccessDeniedError,
    CacheError,
    CacheTimeoutError,
    InsufficientSpaceError,
    LayoutError,
    LeaseLostError,
    ModelNotFoundError,
    RevisionNotFoundError,
    SourceError,
    VerificationError,
)
from .model_cache import ModelCache, ModelStatus
from .sources import register_builtin

__all__ = [
    "AccessDeniedError",
    "CacheError",
    "CacheTimeoutError",
    "InsufficientSpaceError",
    "LayoutError",
    "LeaseLostError",
    "ModelCache",
    "ModelNotFoundError",
    "ModelSpec",
    "ModelStatus",
    "Part",
    "RevisionNotFoundError",
    "SourceError",
    "VerificationError",
    "register_builtin",
]
