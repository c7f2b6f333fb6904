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
    ModelKindError,
    ModelNotFoundError,
    RevisionNotFoundError,
    SourceError,
    VerificationError,
)
from .model_cache import ModelCache, ModelStatus
from .refs import ModelRef, RefError, is_ref, parse_ref, source_problem
from .sources import register_builtin
from .usage import BudgetError

__all__ = [
    "AccessDeniedError",
    "BudgetError",
    "CacheError",
    "CacheTimeoutError",
    "InsufficientSpaceError",
    "LayoutError",
    "LeaseLostError",
    "ModelCache",
    "ModelKindError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelSpec",
    "ModelStatus",
    "Part",
    "RefError",
    "RevisionNotFoundError",
    "SourceError",
    "VerificationError",
    "is_ref",
    "parse_ref",
    "register_builtin",
    "source_problem",
]
