"""The music job: lyrics and style tags to a song."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from worker.schemas.common import Seed, StrictInput

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
