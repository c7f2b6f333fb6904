"""Refusals read as plain field errors: pydantic's union internals never name a field, refused values are quoted only
in part, and an error is at most 1,000 characters however many problems an input has."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import Settings
from worker.schemas import JobInputError, parse_job
from worker.uploads import bucket_for
from worker_client.field_errors import parse_issues

MAX_ERROR_CHARS = 1000  # what a caller may rely on


def refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(JobInputError) as caught:
        parse_job(raw)
    return str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"type": "music", "lyrics": "la", "tags": 5},
            "tags: Input should be a valid string or a valid list",
        ),
        (
            {"type": "music", "lyrics": "la", "tags": {"a": 1}},
            "tags: Input should be a valid string or a valid list",
        ),
        (
            {"type": "music", "lyrics": "la", "tags": [5]},
            "tags: Input should be a valid string; tags.0: Input should be a valid string",
        ),
        (
            {"type": "image", "prompt": "x", "loras": [{"path": 5}]},
            "loras.0.path: Input should be a valid string",
        ),
    ],
)
def test_union_members_never_appear_in_field_names(raw: dict[str, Any], expected: str) -> None:
    message = refusal(raw)
    assert message == expected
    assert "constrained" not in message and "[" not in message


def test_every_field_named_is_one_the_caller_can_find() -> None:
    message = refusal({"type": "music", "lyrics": 5, "tags": 5, "topk": "x"})
    assert [issue.field for issue in parse_issues(message)] == ["lyrics", "tags", "topk"]


def test_a_huge_type_or_unknown_field_is_quoted_in_part() -> None:
    message = refusal({"type": "a" * 2_000_000})
    assert message.startswith("type: unknown job type 'aaa") and "(2000000 characters)" in message
    assert len(message) < 300
    message = refusal({"type": "image", "prompt": "x", "k" * 100_000: 1})
    assert message == f"{'k' * 60}: unknown field"


def test_many_problems_are_cut_to_the_bound_and_counted() -> None:
    message = refusal({"type": "image", "prompt": "x", **{f"extra_{n}": n for n in range(500)}})
    assert len(message) <= MAX_ERROR_CHARS
    assert message.startswith("extra_0: unknown field; ")
    assert message.endswith(" more problems")
    assert parse_issues(message)[-1].field == "input"


def test_one_huge_reason_is_cut_to_the_bound() -> None:
    error = JobInputError("prompt", "x" * 5000)
    assert len(str(error)) == MAX_ERROR_CHARS and error.issues[0].reason == "x" * 5000


@pytest.mark.parametrize("key", ["0", "a b", "é", "x: y", "9lives"])
def test_an_unknown_key_the_wire_format_cannot_name_is_named_under_input(key: str) -> None:
    message = refusal({"type": "image", "prompt": "x", key: 1})
    assert message == f"input: {key!r}: unknown field"
    assert [issue.field for issue in parse_issues(message)] == ["input"]


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://127.0.0.1:99999", "not a valid URL (Port out of range"),
        ("http://[::1", "not a valid URL (Invalid IPv6 URL)"),
        (f"https://{'a' * 64}.example.com", "is not a valid host name"),
        ("http://s3.example.com:port", "not a valid URL"),
    ],
)
def test_a_bad_s3config_endpoint_is_a_field_error(endpoint: str, message: str) -> None:
    s3_config = {"accessId": "AK", "accessSecret": "secret", "bucketName": "b", "endpointUrl": endpoint}
    with pytest.raises(JobInputError) as caught:
        bucket_for(s3_config, Settings())
    assert str(caught.value).startswith("s3Config.endpointUrl: ") and message in str(caught.value)
    assert "secret" not in str(caught.value)
