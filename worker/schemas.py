"""Job inputs and results. The models are the API's documentation: every field, default and bound is here.

`parse_job` turns a raw `job["input"]` into one of the typed inputs, or raises `JobInputError` whose message
names the field (`"width: must be a multiple of 8"`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_SEED = 2**53 - 1  # JSON numbers are exact up to here
MAX_PROMPT_CHARS = 4000

Seed = Annotated[int | None, Field(default=None, ge=0, le=MAX_SEED, description="Random when omitted; the result says which seed ran.")]


class JobInputError(ValueError):
    """A job input the worker refuses. The message names the field: `"<field>: <reason>"`."""


class StrictInput(BaseModel):
    """The base of every job input: unknown fields are refused, strings are stripped, inputs are immutable."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def _multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value}; nearest: {round(value / 8) * 8})")
    return value


Side = Annotated[int, Field(ge=64, le=2048, description="Pixels, a multiple of 8.")]

IMAGE_SCHEDULERS = ("euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc")
IMAGE_MODELS = ("sdxl-base",)


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
    """Text to image with an SDXL pipeline."""

    type: Literal["image"] = "image"
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    width: Side = 1024
    height: Side = 1024
    steps: int = Field(default=30, ge=1, le=150)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0)
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
        description="A single-file SDXL .safetensors in CHECKPOINTS_DIR (ComfyUI's checkpoint_name) instead of the base.",
    )

    _check_width = field_validator("width", "height")(_multiple_of_8)


_SECTION = re.compile(r"\[[^\]\n]{1,40}\]")
_PATH_SUFFIX = re.compile(r"\.(txt|lrc|md|json|yaml|csv)$", re.IGNORECASE)


def _looks_like_path(text: str) -> bool:
    """A single line that reads as a file name. The reference pipeline would open such a file; we never do."""
    text = text.strip()
    if "\n" in text or _SECTION.search(text):
        return False
    return text.startswith(("/", "./", "../", "~")) or bool(_PATH_SUFFIX.search(text))


class MusicJob(StrictInput):
    """Lyrics and style tags to a song with HeartMuLa."""

    type: Literal["music"] = "music"
    lyrics: str = Field(min_length=1, max_length=8000, description="Section markers like [Verse] are kept.")
    tags: str | list[str] = Field(description="Comma-separated string or a list, e.g. 'piano,happy'.")
    duration_s: float = Field(default=30.0, gt=0.0, le=360.0)
    temperature: float = Field(default=1.0, gt=0.0, le=5.0)
    topk: int = Field(default=50, ge=1, le=8197)
    cfg_scale: float = Field(default=1.5, ge=1.0, le=10.0)
    seed: Seed = None
    format: Literal["wav", "flac", "mp3"] = "wav"
    codec_steps: int = Field(default=10, ge=1, le=100)

    @field_validator("tags")
    @classmethod
    def _tags_text(cls, value: str | list[str]) -> str:
        items = [value] if isinstance(value, str) else value
        tags = ",".join(part.strip() for item in items for part in item.split(",") if part.strip())
        if not tags:
            raise ValueError("give at least one tag")
        if _looks_like_path(tags):
            raise ValueError("looks like a file path; send the tags themselves (files are never read)")
        if len(tags) > 1000:
            raise ValueError("at most 1000 characters")
        return tags

    @field_validator("lyrics")
    @classmethod
    def _lyrics_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if _looks_like_path(value):
            raise ValueError("looks like a file path; send the lyrics text itself (files are never read)")
        return value


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_MAX_CAPTION_CHARS = 2000
MAX_TRAINING_IMAGES = 2000  # a static bound; MAX_INLINE_IMAGES bounds inline images at run time


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
    negative_prompt: str = Field(
        default="blurry, lowres, deformed, disfigured, watermark, text, multiple people", max_length=MAX_PROMPT_CHARS
    )
    scheduler: Literal[IMAGE_SCHEDULERS] = "euler"  # type: ignore[valid-type]
    reference_image: str | None = Field(
        default=None, min_length=1, description="URL, base64 or volume path: keeps this subject's identity (IP-Adapter)."
    )
    reference_strength: float = Field(default=0.6, ge=0.0, le=1.0, description="IP-Adapter scale.")
    zip: bool = Field(default=False, description="Also write dataset.zip.")

    _check_width = field_validator("width", "height")(_multiple_of_8)


class TrainingImage(StrictInput):
    """One inline training image and its caption."""

    image: str = Field(min_length=1, description="URL, base64 or volume path.")
    caption: str = Field(min_length=1, max_length=_MAX_CAPTION_CHARS)


class TrainingJob(StrictInput):
    """A LoRA for the SDXL base, trained on a folder of images with same-name .txt captions."""

    type: Literal["training"] = "training"
    dataset_job_id: str | None = Field(default=None, min_length=1, max_length=128, description="A dataset job's id.")
    dataset_path: str | None = Field(default=None, min_length=1, max_length=1024, description="A volume folder.")
    images: list[TrainingImage] | None = Field(default=None, min_length=1, max_length=MAX_TRAINING_IMAGES)
    trigger_word: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Prepended to captions that lack it; the caption of images that have none.",
    )
    name: str = Field(default="lora", pattern=_NAME, description="The LoRA's file name.")
    rank: int = Field(default=16, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0.0, le=1024.0, description="Default: rank (scale 1).")
    steps: int = Field(default=500, ge=1, le=20000)
    learning_rate: float = Field(default=1e-4, gt=0.0, le=0.1)
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0, le=5000)
    batch_size: int = Field(default=1, ge=1, le=16)
    resolution: int = Field(default=1024, ge=64, le=2048, description="Square training size, a multiple of 64.")
    train_text_encoder: bool = False
    mixed_precision: Literal["bf16", "no"] = Field(default="bf16", description="bf16 autocast on a GPU; fp32 on CPU.")
    gradient_checkpointing: bool = True
    cache_latents: bool = Field(default=True, description="Encode each image once instead of every step.")
    caption_dropout: float = Field(default=0.0, ge=0.0, le=0.5)
    seed: Seed = None
    checkpoint_every: int = Field(default=0, ge=0, le=20000, description="Save a checkpoint every N steps; 0: never.")
    sample_every: int = Field(default=0, ge=0, le=20000, description="Sample an image every N steps; 0: never.")
    sample_prompt: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    sample_steps: int = Field(default=20, ge=1, le=100)

    @field_validator("resolution")
    @classmethod
    def _resolution_64(cls, value: int) -> int:
        if value % 64:
            raise ValueError(f"must be a multiple of 64 (got {value}; nearest: {max(64, round(value / 64) * 64)})")
        return value

    @model_validator(mode="after")
    def _one_dataset(self) -> TrainingJob:
        given = [name for name in ("dataset_job_id", "dataset_path", "images") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of dataset_job_id, dataset_path or images (got {given or 'none'})")
        return self

    @field_validator("warmup_steps")
    @classmethod
    def _warmup_below_steps(cls, value: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if value and steps is not None and value >= steps:
            raise ValueError(f"must be less than steps ({steps})")
        return value


JOB_MODELS: dict[str, type[StrictInput]] = {
    "image": ImageJob,
    "music": MusicJob,
    "dataset": DatasetJob,
    "training": TrainingJob,
}



def format_validation_error(error: ValidationError) -> str:
    """One `"<field>: <reason>"` clause per problem, joined by "; "."""
    clauses = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"]) or "input"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        message = message.removeprefix("Value error, ")
        clauses.append(f"{field}: {message}")
    return "; ".join(clauses)


def parse_job(raw: Any, enabled: tuple[str, ...] | None = None) -> StrictInput:
    """Validate `job["input"]` into its typed model; `enabled` restricts the job types this worker serves."""
    if not isinstance(raw, dict):
        raise JobInputError(f"input: expected a JSON object, got {type(raw).__name__}")
    valid = tuple(t for t in JOB_MODELS if enabled is None or t in enabled)
    job_type = raw.get("type")
    if job_type is None:
        raise JobInputError(f"type: required; valid: {', '.join(valid)}")
    if not isinstance(job_type, str) or job_type not in JOB_MODELS:
        raise JobInputError(f"type: unknown job type {job_type!r}; valid: {', '.join(valid)}")
    if job_type not in valid:
        raise JobInputError(f"type: {job_type!r} is not served by this worker (WORKER_JOBS); valid: {', '.join(valid)}")
    try:
        return JOB_MODELS[job_type].model_validate(raw)
    except ValidationError as error:
        raise JobInputError(format_validation_error(error)) from None


class OutputFile(BaseModel):
    """A file a job wrote under its job folder."""

    model_config = ConfigDict(extra="allow")

    path: str = Field(description="Absolute path on the volume.")
    relpath: str = Field(description="Path relative to the job_data folder: '<job id>/<name>'.")
    kind: str = Field(description="image, audio, lora, dataset, log, plot, archive, ...")
    bytes: int
    sha256: str


class JobResult(BaseModel):
    """What a job returns. Job types add their own fields (seed, sample_rate, ...)."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    type: str
    outputs: list[OutputFile]
    metrics: dict[str, float | int] = Field(default_factory=dict)
