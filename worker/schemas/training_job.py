"""The training job: a LoRA for the SDXL base, trained on a folder of captioned images."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from worker.schemas.common import MAX_PROMPT_CHARS, Seed, StrictInput

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_MAX_CAPTION_CHARS = 2000
MAX_TRAINING_IMAGES = 2000  # a static bound; MAX_INLINE_IMAGES bounds inline images at run time
AUTO_CAPTION = "auto"
# The Linear layers a LoRA may wrap: inside the UNet's transformer blocks (the only modules with a kohya/sgm
# name here) and the CLIP text encoders' attention and MLP.
UnetTarget = Literal["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TextTarget = Literal["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
UNET_TARGET_NAMES: tuple[str, ...] = UnetTarget.__args__


class TrainingImage(StrictInput):
    """One inline training image and its caption."""

    image: str = Field(min_length=1, description="URL, base64 or volume path.")
    caption: str | None = Field(
        default=None,
        min_length=1,
        max_length=_MAX_CAPTION_CHARS,
        description='Omitted or "auto": written by the captioning model.',
    )


class TrainingJob(StrictInput):
    """A LoRA for the SDXL base, trained on a folder of images with same-name .txt captions."""

    type: Literal["training"] = "training"
    dataset_job_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="A dataset job's id."
    )
    dataset_path: str | None = Field(
        default=None, min_length=1, max_length=1024, description="A volume folder."
    )
    images: list[TrainingImage] | None = Field(default=None, min_length=1, max_length=MAX_TRAINING_IMAGES)
    trigger_word: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Prepended to captions that lack it; the caption of images that have none.",
    )
    name: str = Field(default="lora", pattern=_NAME, description="The LoRA's file name.")
    checkpoint: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Train on this single-file SDXL checkpoint (a CHECKPOINTS_DIR name or a model reference), the "
        "one the LoRA will be used with, instead of the base.",
    )
    rank: int = Field(default=16, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0.0, le=1024.0, description="Default: rank (scale 1).")
    steps: int = Field(default=500, ge=1, le=20000)
    learning_rate: float = Field(default=1e-4, gt=0.0, le=0.1)
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0, le=5000)
    batch_size: int = Field(default=1, ge=1, le=16)
    resolution: int = Field(
        default=1024,
        ge=64,
        le=2048,
        description="The training area's side (resolution² pixels), a multiple of 64; images go to the "
        "aspect-ratio bucket nearest their own.",
    )
    train_text_encoder: bool = False
    target_modules: Literal["attention", "kohya"] | list[UnetTarget | TextTarget] = Field(
        default="kohya",
        description="kohya: every Linear of the UNet's transformer blocks (and of the text encoders' attention "
        "and MLP); attention: the attention projections only; or a list of layer names.",
    )
    auto_caption: bool = Field(
        default=True,
        description="Caption images that have none with the captioning model; false: the trigger word alone.",
    )
    resume_from: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="A training job id, or a checkpoint file on the volume, to continue from.",
    )
    min_snr_gamma: float | None = Field(default=None, gt=0.0, le=20.0, description="Min-SNR loss weighting.")
    noise_offset: float = Field(default=0.0, ge=0.0, le=1.0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    mixed_precision: Literal["bf16", "no"] = Field(
        default="bf16", description="bf16 autocast on a GPU; fp32 on CPU."
    )
    gradient_checkpointing: bool = True
    cache_latents: bool = Field(default=True, description="Encode each image once instead of every step.")
    caption_dropout: float = Field(default=0.0, ge=0.0, le=0.5)
    seed: Seed = None
    checkpoint_every: int = Field(
        default=0, ge=0, le=20000, description="Save a checkpoint every N steps; 0: never."
    )
    sample_every: int = Field(
        default=0, ge=0, le=20000, description="Sample an image every N steps; 0: never."
    )
    sample_prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    sample_steps: int = Field(default=20, ge=1, le=100)
    sample_grid: bool = Field(
        default=True, description="At the end, the sample prompt at a few LoRA scales in one image."
    )

    @field_validator("resolution")
    @classmethod
    def _resolution_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError(
                f"must be a multiple of 64 (got {value}; nearest: {max(64, round(value / 64) * 64)})"
            )
        return value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _known_targets(cls, value: object) -> object:
        """One readable error instead of pydantic's per-branch union messages."""
        names = (*UNET_TARGET_NAMES, *TextTarget.__args__)
        if not isinstance(value, str | list) or (
            isinstance(value, str) and value not in ("attention", "kohya")
        ):
            raise ValueError(f'"attention", "kohya" or a list of layer names (got {value!r})')
        if isinstance(value, list):
            unknown = [name for name in value if name not in names]
            if unknown:
                raise ValueError(f"unknown layer {unknown[0]!r}; known: {', '.join(names)}")
        return value

    @field_validator("target_modules")
    @classmethod
    def _some_unet_target(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not any(name in UNET_TARGET_NAMES for name in value):
                raise ValueError(f"name at least one UNet layer ({', '.join(UNET_TARGET_NAMES)})")
            return list(dict.fromkeys(value))
        return value

    @model_validator(mode="after")
    def _one_dataset(self) -> TrainingJob:
        given = [
            name for name in ("dataset_job_id", "dataset_path", "images") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of dataset_job_id, dataset_path or images (got {given or 'none'})"
            )
        return self

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_below_steps(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if value and steps is not None and value >= steps:
            raise ValueError(f"must be less than steps ({steps})")
        return value
