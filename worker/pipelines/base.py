"""What every job pipeline is given and what it returns.

A pipeline is a plain object: `load(env)` once per worker (heavy imports and weights live there), then
`run(job, ctx)` per job. It reports progress through `ctx.progress`, calls `ctx.check_cancelled()` between
steps, and writes files only through `ctx.folder`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from worker.job_folders import JobFolder, JobStore
from worker.schemas import OutputFile

if TYPE_CHECKING:
    from cache.volume import Volume
    from worker.config import Settings
    from worker.inputs import VolumeFiles
    from worker.intake import JobRequest
    from worker.model_refs import ModelRefs


def resolve_seed(seed: int | None) -> int:
    """The job's seed, or a fresh random one (returned in the result so the job can be replayed)."""
    return seed if seed is not None else secrets.randbelow(2**32)


class JobCancelled(Exception):
    """The job was cancelled (RunPod cancel or timeout) and stopped between two steps."""


class Progress:
    """Throttled progress: at most one report per `interval_s`, plus the last step."""

    def __init__(self, sink: Callable[[dict[str, Any]], None], interval_s: float = 1.0) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._last = float("-inf")

    def __call__(self, step: int, total: int, **extra: Any) -> None:
        now = time.monotonic()
        if step < total and now - self._last < self._interval_s:
            return
        self._last = now
        self._sink({"step": step, "total": total, **extra})


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), or the CPU allocator's refusal, which torch raises as a RuntimeError."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in str(error)
    )


@dataclass
class JobContext:
    """Per-job services handed to `Pipeline.run`: the request it came in, its folder, progress and cancel."""

    request: JobRequest
    folder: JobFolder
    progress: Progress
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")


@dataclass
class PipelineOutput:
    """A pipeline's answer: the files it wrote, its metrics, and fields for the result (seed, sample_rate...)."""

    outputs: list[OutputFile]
    metrics: dict[str, float | int] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


class ModelResolver(Protocol):
    def __call__(self, name: str) -> Path:
        """The local folder of a catalog model (logical name), downloading it first if needed."""


@dataclass
class LoadEnv:
    """What `Pipeline.load` may use: settings, the volume (and the paths users may name on it), the model
    resolver, the device, the job folders, and the other pipelines."""

    settings: Settings
    volume: Volume
    files: VolumeFiles
    models: ModelResolver
    device: str
    profile: str
    store: JobStore
    pipeline: Callable[[str], Pipeline]

    @cached_property
    def refs(self) -> ModelRefs:
        """Model references a job names (hf:, civitai:, https://): `with env.refs.use(ref, "lora", field) as path`."""
        from worker.model_refs import ModelRefs

        return ModelRefs.for_volume(self.settings, self.volume)


class Pipeline(Protocol):
    """`run` gets the request's typed input (`ctx.request.job`) as `job`."""

    job_type: ClassVar[str]

    def load(self, env: LoadEnv) -> None: ...

    def run(self, job: Any, ctx: JobContext) -> PipelineOutput: ...
