"""What every job input shares: the strict base model, seeds, sizes, and the refusal of an input.

`JobInputError` carries `(field, reason)` issues; `worker_client.field_errors` formats them into the
`"field: reason"` text RunPod callers see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker_client.field_errors import FieldIssue, format_issues

MAX_SEED = 2**53 - 1  # JSON numbers are exact up to here
MAX_PROMPT_CHARS = 4000

Seed = Annotated[
    int | None,
    Field(
        default=None, ge=0, le=MAX_SEED, description="Random when omitted; the result says which seed ran."
    ),
]


class JobInputError(ValueError):
    """A job input the worker refuses, as `(field, reason)` issues."""

    def __init__(self, field: str, reason: str, *more: FieldIssue) -> None:
        self.issues: tuple[FieldIssue, ...] = (FieldIssue(field, reason), *more)
        super().__init__(format_issues(self.issues))

    @classmethod
    def of(cls, issues: Iterable[FieldIssue]) -> JobInputError:
        first, *rest = issues
        return cls(first.field, first.reason, *rest)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(issue.field for issue in self.issues)


class StrictInput(BaseModel):
    """The base of every job input: unknown fields are refused, strings are stripped, inputs are immutable."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (got {value}; nearest: {round(value / 8) * 8})")
    return value


Side = Annotated[int, Field(ge=64, le=2048, description="Pixels, a multiple of 8.")]


def validation_issues(error: ValidationError) -> list[FieldIssue]:
    """One issue per problem pydantic found, named by the field's dotted location."""
    issues = []
    for problem in error.errors(include_url=False):
        field = ".".join(str(part) for part in problem["loc"]) or "input"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown field"
        issues.append(FieldIssue(field, message.removeprefix("Value error, ")))
    return issues


QUOTE_CHARS = 60  # a refused value is quoted at most this long: errors and log lines stay short


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr` of a caller's value, cut to a short prefix (with its full length) so an error never echoes a
    megabyte of input back."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}… ({len(text)} characters)"
