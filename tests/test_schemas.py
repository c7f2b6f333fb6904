"""Job input validation: defaults, bounds, unknown fields, wrong types; every error names its field."""

from __future__ import annotations

import pytest

from worker.schemas import ImageJob, JobInputError, MusicJob, parse_job


def error_of(raw: object, enabled: tuple[str, ...] | None = None) -> str:
    with pytest.raises(JobInputError) as caught:
        parse_job(raw, enabled=enabled)
    return str(caught.value)


def test_image_defaults() -> None:
    job = parse_job({"type": "image", "prompt": "a red fox"})
    assert isinstance(job, ImageJob)
    assert (job.width, job.height, job.steps, job.num_images) == (1024, 1024, 30, 1)
    assert (job.scheduler, job.format, job.model, job.seed, job.loras) == ("euler", "png", "sdxl-base", None, [])


def test_music_tags_list_and_string_agree() -> None:
    as_list = parse_job({"type": "music", "lyrics": "[Verse]\nhello", "tags": ["piano", " happy "]})
    as_text = parse_job({"type": "music", "lyrics": "[Verse]\nhello", "tags": "piano, happy"})
    assert isinstance(as_list, MusicJob)
    assert as_list.tags == as_text.tags == "piano,happy"
    assert as_list.lyrics == "[Verse]\nhello"


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"type": "image", "prompt": "x", "width": 100}, "width", "multiple of 8"),
        ({"type": "image", "prompt": "x", "height": 4096}, "height", "less than or equal"),
        ({"type": "image", "prompt": "x", "height": 32}, "height", "greater than or equal"),
        ({"type": "image", "prompt": "x", "steps": 0}, "steps", "greater than or equal"),
        ({"type": "image", "prompt": "x", "steps": "many"}, "steps", "valid integer"),
        ({"type": "image", "prompt": "x", "num_images": 9}, "num_images", "less than or equal"),
        ({"type": "image", "prompt": "x", "scheduler": "lms"}, "scheduler", "euler"),
        ({"type": "image", "prompt": "x", "format": "gif"}, "format", "png"),
        ({"type": "image", "prompt": "x", "model": "sd15"}, "model", "sdxl-base"),
        ({"type": "image", "prompt": "x", "seed": -1}, "seed", "greater than or equal"),
        ({"type": "image", "prompt": "x", "guidance_scale": "high"}, "guidance_scale", "valid number"),
        ({"type": "image", "prompt": ""}, "prompt", "at least 1 character"),
        ({"type": "image"}, "prompt", "required"),
        ({"type": "image", "prompt": "x", "colour": "red"}, "colour", "unknown field"),
        ({"type": "image", "prompt": "x", "loras": [{"scale": 1.0}]}, "loras.0", "exactly one of path or job_id"),
        ({"type": "image", "prompt": "x", "loras": [{"path": "a.safetensors", "scale": 9}]}, "loras.0.scale", "4"),
        ({"type": "music", "lyrics": "", "tags": "piano"}, "lyrics", "at least 1 character"),
        ({"type": "music", "lyrics": "   \n  ", "tags": "piano"}, "lyrics", ""),
        ({"type": "music", "lyrics": "/etc/passwd", "tags": "piano"}, "lyrics", "file path"),
        ({"type": "music", "lyrics": "song.txt", "tags": "piano"}, "lyrics", "file path"),
        ({"type": "music", "lyrics": "la la", "tags": "../tags.txt"}, "tags", "file path"),
        ({"type": "music", "lyrics": "la la", "tags": []}, "tags", "at least one tag"),
        ({"type": "music", "lyrics": "la la", "tags": "piano", "duration_s": 100000}, "duration_s", "less than"),
        ({"type": "music", "lyrics": "la la", "tags": "piano", "cfg_scale": 0.5}, "cfg_scale", "greater than"),
        ({"type": "music", "lyrics": "la la", "tags": "piano", "format": "ogg"}, "format", "wav"),
    ],
)
def test_errors_name_the_field(raw: dict, field: str, fragment: str) -> None:
    message = error_of(raw)
    assert message.startswith(f"{field}: ") or f"; {field}: " in message, message
    assert fragment in message


def test_every_problem_is_reported() -> None:
    message = error_of({"type": "image", "prompt": "x", "width": 100, "steps": 0, "extra": 1})
    for field in ("width", "steps", "extra"):
        assert f"{field}: " in message


def test_unknown_type_lists_valid_types() -> None:
    message = error_of({"type": "video"})
    assert message.startswith("type: unknown job type 'video'")
    assert "image" in message and "music" in message


def test_missing_type_and_non_object_input() -> None:
    assert error_of({"prompt": "x"}).startswith("type: required")
    assert error_of(["image"]).startswith("input: expected a JSON object")
    assert error_of(None).startswith("input: expected a JSON object")


def test_disabled_type_is_refused_with_what_is_served() -> None:
    message = error_of({"type": "music", "lyrics": "la", "tags": "x"}, enabled=("image",))
    assert message == "type: 'music' is not served by this worker (WORKER_JOBS), valid: image"


def test_lyrics_with_sections_are_text_even_with_slashes() -> None:
    job = parse_job({"type": "music", "lyrics": "[Verse] and/or /night.txt", "tags": "rock"})
    assert job.lyrics == "[Verse] and/or /night.txt"


def test_readme_documents_every_job_field() -> None:
    """The README's per-type tables name every field of the job's schema."""
    import re
    from pathlib import Path

    from worker.schemas import JOB_MODELS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for job_type, model in JOB_MODELS.items():
        section = re.search(rf"^### `{job_type}`\n(.*?)(?=^#)", readme, re.MULTILINE | re.DOTALL)
        assert section, f"README has no '### `{job_type}`' section"
        documented = set(re.findall(r"`([a-z_0-9]+)`", section.group(1)))
        missing = set(model.model_fields) - {"type"} - documented
        assert not missing, f"README's {job_type} table misses {sorted(missing)}"
