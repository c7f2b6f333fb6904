"""The job types this worker serves: the one registry every other list derives from.

The server's `WORKER_JOBS` setting, the job schemas, the model catalog's per-job model lists, the Celery tasks and
the README's job tables are all checked against (or built from) `JOB_TYPES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobType:
    """One kind of job: its `type` value in a job input and what it makes."""

    name: str
    summary: str


REGISTRY: tuple[JobType, ...] = (
    JobType("music", "lyrics and style tags to a song"),
    JobType("image", "text to image, with LoRAs and single-file checkpoints"),
    JobType("dataset", "images of one subject with same-name captions, ready for LoRA training"),
    JobType("training", "a LoRA trained on a dataset, as kohya-compatible .safetensors"),
)

JOB_TYPES: tuple[str, ...] = tuple(job.name for job in REGISTRY)
