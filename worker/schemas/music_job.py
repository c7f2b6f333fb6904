"""The music job: lyrics and style tags to a song, with HeartMuLa or ACE-Step 1.5 (`model`).

The shared fields (lyrics, tags, duration_s, seed, format) mean the same for both engines; each engine's own
settings are refused, naming the field, when the job picks the other engine.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from cache.catalog import MUSIC_ENGINES
from worker.schemas.common import Seed, StrictInput

MUSIC_MODELS = MUSIC_ENGINES  # the catalog names the engines: it warms them (MUSIC_MODELS)
ENGINE_FIELDS = {
    "heartmula": ("temperature", "topk", "cfg_scale", "codec_steps"),
    "ace-step": ("steps", "guidance", "batch", "task", "reference_audio", "cover_strength"),
}
# HeartMuLa: its LM's context; ACE-Step 1.5: the 10 s to 10 min range it was trained on
MAX_DURATION_S = {"heartmula": 360.0, "ace-step": 600.0}
DEFAULT_DURATION_S = 30.0

_SECTION = re.compile(r"\[[^\]\n]{1,40}\]")
_PATH_SUFFIX = re.compile(r"\.(txt|lrc|md|json|yaml|csv)$", re.IGNORECASE)


def _looks_like_path(text: str) -> bool:
    """A single line that reads as a file name. The reference pipeline would open such a file; we never do."""
    text = text.strip()
    if "\n" in text or _SECTION.search(text):
        return False
    return text.startswith(("/", "./", "../", "~")) or bool(_PATH_SUFFIX.search(text))


def _refused(issues: list[tuple[str, str]]) -> ValidationError:
    """Cross-field refusals located at the field they are about (a model validator's own errors name none)."""
    return ValidationError.from_exception_data(
        "MusicJob",
        [
            InitErrorDetails(type=PydanticCustomError("music_field", reason), loc=(name,), input=None)
            for name, reason in issues
        ],
    )


class MusicJob(StrictInput):
    """Lyrics and style tags to a song with HeartMuLa or ACE-Step 1.5."""

    type: Literal["music"] = "music"
    model: Literal[MUSIC_MODELS] = Field(  # type: ignore[valid-type]
        default="heartmula", description="The engine: heartmula or ace-step (ACE-Step 1.5)."
    )
    lyrics: str = Field(min_length=1, max_length=8000, description="Section markers like [Verse] are kept.")
    tags: str | list[str] = Field(description="Comma-separated string or a list, e.g. 'piano,happy'.")
    duration_s: float | None = Field(
        default=None,
        gt=0.0,
        le=max(MAX_DURATION_S.values()),
        description="30 s when omitted (cover: the reference's length).",
    )
    seed: Seed = None
    format: Literal["wav", "flac", "mp3"] = "wav"
    # HeartMuLa
    temperature: float = Field(default=1.0, gt=0.0, le=5.0)
    topk: int = Field(default=50, ge=1, le=8197)
    cfg_scale: float = Field(default=1.5, ge=1.0, le=10.0)
    codec_steps: int = Field(default=10, ge=1, le=100)
    # ACE-Step
    steps: int = Field(default=8, ge=1, le=100, description="Diffusion steps; the turbo model is made for 8.")
    guidance: float | None = Field(
        default=None,
        ge=1.0,
        le=15.0,
        description="Base/sft models only (7 when omitted); turbo has it built in.",
    )
    batch: int = Field(
        default=1, ge=1, le=8, description="Songs in one job, one output each (seeds seed, seed+1, ...)."
    )
    task: Literal["text2music", "cover"] = "text2music"
    reference_audio: str | None = Field(
        default=None,
        min_length=1,
        description="The song to cover: URL, base64 or volume path (WAV, FLAC, MP3, OGG).",
    )
    cover_strength: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="How much of the reference the cover keeps (lower: more of the text).",
    )

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

    @model_validator(mode="after")
    def _engine_fields(self) -> MusicJob:
        issues = []
        for engine, fields in ENGINE_FIELDS.items():
            if engine != self.model:
                own = ", ".join(ENGINE_FIELDS[self.model])
                issues += [
                    (name, f"only for model {engine!r}; {self.model!r} takes {own}")
                    for name in fields
                    if name in self.model_fields_set
                ]
        limit = MAX_DURATION_S[self.model]
        if self.duration_s is not None and self.duration_s > limit:
            issues.append(("duration_s", f"at most {limit:g} s for {self.model}"))
        if self.model == "ace-step":
            if self.task == "cover" and self.reference_audio is None:
                issues.append(("reference_audio", "required for task 'cover': the song to cover"))
            if self.task != "cover":
                issues += [
                    (name, "only for task 'cover'")
                    for name in ("reference_audio", "cover_strength")
                    if name in self.model_fields_set
                ]
        if issues:
            raise _refused(issues)
        return self
