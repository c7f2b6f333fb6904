"""The dataset job: images of one subject with same-name captions, ready for LoRA training.

It draws with any image model family (`model`); the defaults below are SDXL's, and another family's defaults
and bounds apply as for the image job (`worker/pipelines/image_families.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from worker.pipelines.image_families import SDXL_NEGATIVE, check_family_bounds, fill_family_defaults
from worker.schemas.common import MAX_PROMPT_CHARS, Seed, Side, StrictInput, multiple_of_8
from worker.schemas.image_job import IMAGE_SCHEDULERS, ImageModel, repo_family


class DatasetJob(StrictInput):
    """Images of one subject with same-name caption files: `dataset/0001.png` + `0001.txt`, ready for training."""

    type: Literal["dataset"] = "dataset"
    subject: str = Field(min_length=1, max_length=500, description="Who or what, e.g. 'a red-haired woman'.")
    trigger_word: str = Field(
        default="ohwx", min_length=1, max_length=64, pattern=r"^[^,\n]+$", description="Starts every caption."
    )
    prompts: list[Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Prompt templates, cycled; '{subject}' is replaced (prepended when absent). Default: varied shots.",
    )
    num_images: int = Field(default=20, ge=1, le=200)
    seed: Seed = None
    width: Side = 1024
    height: Side = 1024
    steps: int = Field(default=30, ge=1, le=150)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0)
    negative_prompt: str = Field(default=SDXL_NEGATIVE, max_length=MAX_PROMPT_CHARS)
    scheduler: Literal[IMAGE_SCHEDULERS] = "euler"  # type: ignore[valid-type]
    model: ImageModel = "sdxl-base"
    checkpoint: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Draw with this single-file SDXL checkpoint (a CHECKPOINTS_DIR name or a model reference) "
        "instead of the base (Morpheus's checkpoint_name).",
    )
    reference_image: str | None = Field(
        default=None,
        min_length=1,
        description="URL, base64 or volume path: keeps this subject's identity (IP-Adapter).",
    )
    reference_strength: float = Field(default=0.6, ge=0.0, le=1.0, description="IP-Adapter scale.")
    zip: bool = Field(default=False, description="Also write dataset.zip.")

    _check_width = field_validator("width", "height")(multiple_of_8)

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        return fill_family_defaults(data, "dataset", repo_family(info))

    @model_validator(mode="after")
    def _family_bounds(self, info: ValidationInfo) -> DatasetJob:
        check_family_bounds(self.__dict__, repo_family(info))
        return self
