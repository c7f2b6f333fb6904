"""The image job: text to image with one of the image model families (SDXL, Z-Image, FLUX.2 [klein]), LoRAs, and
single-file SDXL checkpoints.

The field defaults below are SDXL's; a job naming another `model` gets that family's defaults and bounds
(`worker/pipelines/image_families.py`), and a field its pipeline would ignore is refused naming the family.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cache.refs import RefError, is_ref, parse_ref
from worker.pipelines.image_families import (
    IMAGE_MODELS,
    SCHEDULER_NAMES,
    check_family_bounds,
    fill_family_defaults,
    is_repo_model,
)
from worker.schemas.common import (
    MAX_PROMPT_CHARS,
    JobInputError,
    Seed,
    Side,
    StrictInput,
    multiple_of_8,
    quoted,
    validation_issues,
)

IMAGE_SCHEDULERS = SCHEDULER_NAMES

__all__ = [
    "IMAGE_MODELS", "IMAGE_SCHEDULERS", "ImageJob", "ImageModel", "LoraRef", "repo_family",
    "with_repo_family",
]  # fmt: skip

Job = TypeVar("Job", bound=StrictInput)

MODEL_DESCRIPTION = (
    "A catalog family (sdxl-base, z-image-turbo, flux2-klein-4b), or hf:<owner>/<repo>[@<revision>]: a diffusers "
    "repo of one of those families (read from its model_index.json), whose defaults and bounds then apply."
)


def image_model(value: str) -> str:
    """A job's `model`: a catalog family's name, or a diffusers repo reference in its canonical form."""
    if value in IMAGE_MODELS:
        return value
    if is_repo_model(value):
        try:
            ref = parse_ref(value)
        except RefError as err:
            raise ValueError(str(err)) from None
        if ref.kind == "hf-repo":
            return ref.text
    if is_ref(value):
        raise ValueError(
            f"{quoted(value)} names one file, but model takes a diffusers repo, hf:<owner>/<repo>[@<revision>] "
            "(a single-file checkpoint goes in checkpoint)"
        )
    raise ValueError(
        f"unknown model {quoted(value)} (valid: {', '.join(IMAGE_MODELS)}, or hf:<owner>/<repo>[@<revision>])"
    )


# an image or dataset job's `model`
ImageModel = Annotated[
    str,
    Field(min_length=1, max_length=300, description=MODEL_DESCRIPTION, examples=list(IMAGE_MODELS)),
    AfterValidator(image_model),
]


def repo_family(info: ValidationInfo) -> str | None:
    """The family a repo `model` turned out to be, when the pipeline validates the job again knowing it."""
    return (info.context or {}).get("repo_family")


def with_repo_family(job: Job, family: str) -> Job:
    """A job whose `model` is a repo, validated again from the fields its caller gave, now that the repo is known
    to be of `family`: that family's defaults fill the rest, and its rules and bounds apply (JobInputError)."""
    given = job.model_dump(include=set(job.model_fields_set) | {"type"})
    try:
        return type(job).model_validate(given, context={"repo_family": family})
    except ValidationError as error:
        raise JobInputError.of(validation_issues(error)) from None


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
    model: ImageModel = "sdxl-base"
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
    def _family_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        return fill_family_defaults(data, "image", repo_family(info))

    @model_validator(mode="after")
    def _family_bounds(self, info: ValidationInfo) -> ImageJob:
        check_family_bounds(self.__dict__, repo_family(info))
        return self
