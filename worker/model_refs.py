"""Model references a job names (`hf:…`, `civitai:…`, `https://…`), fetched through the shared model cache.

`ModelRefs.use(ref, want, field)` is a context manager: the file (or repo folder) on the volume, held for the block
so that no worker evicts it meanwhile. A reference the job may not name (MODEL_SOURCES), one that does not exist,
is refused, does not verify, is the wrong kind of file, or does not fit in CACHE_MAX_GB is a field error naming
`field`; the cache's network failures and waits stay worker errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cache import (
    AccessDeniedError,
    BudgetError,
    LayoutError,
    ModelCache,
    ModelKindError,
    ModelNotFoundError,
    ModelRef,
    RefError,
    RevisionNotFoundError,
    VerificationError,
    is_ref,
    parse_ref,
    source_problem,
)
from worker.schemas import JobInputError

if TYPE_CHECKING:
    from cache.safetensors_header import Want
    from cache.volume import Volume
    from worker.config import Settings

# What the caller got wrong (or may fix: a token, the budget): answered as a field error.
_CALLER_ERRORS = (
    AccessDeniedError,
    BudgetError,
    LayoutError,
    ModelKindError,
    ModelNotFoundError,
    RevisionNotFoundError,
    VerificationError,
)

__all__ = ["ModelRefs", "is_ref"]


class ModelRefs:
    def __init__(self, cache: ModelCache, settings: Settings) -> None:
        self.cache = cache
        self.sources = settings.cache.model_sources
        self.timeout = settings.cache_wait_timeout_s

    @classmethod
    def for_volume(cls, settings: Settings, volume: Volume) -> ModelRefs:
        return cls(ModelCache.from_settings(volume.models_dir, settings.cache_settings()), settings)

    def describe(self, text: str, field: str) -> dict:
        """What the reference's source says about it, before any download (`ModelCache.describe`)."""
        ref = self._allowed(text, field)
        try:
            return self.cache.describe(ref)
        except _CALLER_ERRORS as err:
            raise JobInputError(field, str(err)) from None

    @contextmanager
    def use(self, text: str, want: Want | None, field: str) -> Iterator[Path]:
        ref = self._allowed(text, field)
        with ExitStack() as held:
            try:
                path = held.enter_context(self.cache.use(ref, self.timeout, want))
            except _CALLER_ERRORS as err:
                raise JobInputError(field, str(err)) from None
            yield path

    def _allowed(self, text: str, field: str) -> ModelRef:
        try:
            ref = parse_ref(text)
        except RefError as err:
            raise JobInputError(field, str(err)) from None
        if problem := source_problem(ref, self.sources):
            raise JobInputError(field, problem)
        return ref
