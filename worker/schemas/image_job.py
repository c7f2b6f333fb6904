"""The image job: text to image with one of the image model families (SDXL, Z-Image, FLUX.2 [klein]), LoRAs, and
single-file SDXL checkpoints.

The field defaults below are SDXL's; a job naming another `model` gets that family's defaults and bounds
(`worker/pipelines/image_families.py`), and a field its pipeline would ignore is refused naming the family.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from worker.pipelines.image_families import (
    IMAGE_MODELS,
    SCHEDULER_NAMES,
    check_family_bounds,
    fill_family_defaults,
)
from worker.schemas.common import MAX_PROMPT_CHARS, Seed, Side, StrictInput, multiple_of_8

IMAGE_SCHEDULERS = SCHEDULER_NAMES

__all__ = ["IMAGE_MODELS", "IMAGE_SCHEDULERS", "ImageJob", "LoraRef"]


class LoraRef(StrictInput):
    """A LoRA to apply to an image job: a `.safetensors` on the volume, or the id of a finished training job."""

    path: str | None = Field(default=None, min_length=1, max_length=1024)
    job_id: str | None = Field(default=None, min_length=1, max_length=128)
    scale: float = Field(default=1.0, ge=-4.0, le=4.0)

    @model_validator(mode="after")
    def _one_source(self) -> LoraRef:
        if (self.path is None) == (self.job_id is None):
            raise ValueError("give exactly one of path or job_id")
        return self


class ImageJob(StrictInput):
    """Text to image with the resident pipeline of the job's model family."""

    type: Literal["image"] = "image"
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    width: Side = 1024
    height: Side = 1024
    steps: int = Field(
        default=30, ge=1, le=150, description="Default per model: 30 SDXL, 8 Z-Image, 4 FLUX.2."
    )
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Default per model: 5, 0, —.")
    seed: Seed = None
    num_images: int = Field(default=1, ge=1, le=8)
    scheduler: Literal[IMAGE_SCHEDULERS] = "euler"  # type: ignore[valid-type]
    format: Literal["png", "jpeg", "webp"] = "png"
    model: Literal[IMAGE_MODELS] = "sdxl-base"  # type: ignore[valid-type]
    loras: list[LoraRef] = Field(default_factory=list, max_length=8)
    checkpoint: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="A single-file SDXL .safetensors in CHECKPOINTS_DIR (ComfyUI's checkpoint_name) instead of the "
        "base; a name of another family's model (z_image_turbo_bf16.safetensors, ...) selects that model.",
    )

    _check_width = field_validator("width", "height")(multiple_of_8)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        return fill_family_defaults(data, "image")

    @model_validator(mode="after")
    def _family_bounds(self) -> ImageJob:
        check_family_bounds(self.__dict__)
        return self
