"""Job inputs and results. The models are the API's documentation: every field, default and bound is here.

`parse_job` turns a raw `job["input"]` into one of the typed inputs, or raises `JobInputError` naming the field.
The job types are `worker_client.jobs.JOB_TYPES`; each has one model here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from worker.schemas.common import (
    MAX_PROMPT_CHARS,
    MAX_SEED,
    JobInputError,
    StrictInput,
    quoted,
    validation_issues,
)
from worker.schemas.dataset_job import DatasetJob
from worker.schemas.image_job import IMAGE_MODELS, IMAGE_SCHEDULERS, ImageJob, LoraRef, with_repo_family
from worker.schemas.music_job import MusicJob
from worker.schemas.result import JobResult, OutputFile
from worker.schemas.training_job import MAX_TRAINING_IMAGES, TrainingImage, TrainingJob
from worker_client.jobs import JOB_TYPES

JOB_MODELS: dict[str, type[StrictInput]] = {
    "image": ImageJob,
    "music": MusicJob,
    "dataset": DatasetJob,
    "training": TrainingJob,
}
if tuple(sorted(JOB_MODELS)) != tuple(sorted(JOB_TYPES)):
    raise ImportError(
        f"worker.schemas models {sorted(JOB_MODELS)} differ from the job types {sorted(JOB_TYPES)}"
    )

__all__ = [
    "IMAGE_MODELS", "IMAGE_SCHEDULERS", "JOB_MODELS", "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_TRAINING_IMAGES",
    "DatasetJob", "ImageJob", "JobInputError", "JobResult", "LoraRef", "MusicJob", "OutputFile", "StrictInput",
    "TrainingImage", "TrainingJob", "parse_job", "with_repo_family",
]  # fmt: skip


def parse_job(raw: Any, enabled: tuple[str, ...] | None = None) -> StrictInput:
    """Validate `job["input"]` into its typed model; `enabled` restricts the job types this worker serves."""
    if not isinstance(raw, dict):
        raise JobInputError("input", f"expected a JSON object, got {type(raw).__name__}")
    valid = tuple(t for t in JOB_MODELS if enabled is None or t in enabled)
    job_type = raw.get("type")
    if job_type is None:
        raise JobInputError("type", f"required; valid: {', '.join(valid)}")
    if not isinstance(job_type, str) or job_type not in JOB_MODELS:
        raise JobInputError("type", f"unknown job type {quoted(job_type)}; valid: {', '.join(valid)}")
    if job_type not in valid:
        raise JobInputError(
            "type", f"{job_type!r} is not served by this worker (WORKER_JOBS); valid: {', '.join(valid)}"
        )
    try:
        return JOB_MODELS[job_type].model_validate(raw)
    except ValidationError as error:
        raise JobInputError.of(validation_issues(error)) from None
