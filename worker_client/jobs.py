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
    celery_task: str  # the Celery task that runs it for Morpheus
    wait_timeout_s: float  # how long that task waits for the job by default


REGISTRY: tuple[JobType, ...] = (
    JobType("music", "lyrics and style tags to a song", "generate_music", 1800.0),
    JobType("image", "text to image, with LoRAs and single-file checkpoints", "generate_image", 1800.0),
    JobType(
        "dataset",
        "images of one subject with same-name captions, ready for training",
        "generate_dataset",
        3600.0,
    ),
    JobType(
        "training", "a LoRA trained on a dataset, as kohya-compatible .safetensors", "train_lora", 4 * 3600.0
    ),
)

JOB_TYPES: tuple[str, ...] = tuple(job.name for job in REGISTRY)
