"""What every job input shares: the strict base model, seeds, sizes, and the refusal of an input.

`JobInputError` carries `(field, reason)` issues; `worker_client.field_errors` formats them into the
`"field: reason"` text RunPod callers see.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker_client.field_errors import FieldIssue, format_issues

MAX_SEED = 2**53 - 1  # JSON numbers are exact up to here
MAX_PROMPT_CHARS = 4000
_FIELD_NAME = re.compile(r"[A-Za-z_][\w.\[\]-]*")  # what worker_client.field_errors reads back as a field
QUOTE_CHARS = 60  # a refused value is quoted at most this long: errors and log lines stay short
MAX_ERROR_CHARS = 1000  # an error lists the issues that fit, then how many more there are

Seed = Annotated[
    int | None,
    Field(
        default=None, ge=0, le=MAX_SEED, description="Random when omitted; the result says which seed ran."
    ),
]


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr` of a caller's value, cut to a short prefix (with its full length) so an error never echoes a
    megabyte of input back."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}… ({len(text)} characters)"


def field_issue(field: str, reason: str) -> FieldIssue:
    """The issue of `field`; a name the wire format cannot carry as a field (an unknown key such as "0" or "a b")
    is named under `input` instead, quoted in the reason."""
    if _FIELD_NAME.fullmatch(field):
        return FieldIssue(field, reason)
    return FieldIssue("input", f"{quoted(field)}: {reason}")


def _bounded(issues: tuple[FieldIssue, ...]) -> str:
    """The error text of `issues`, at most MAX_ERROR_CHARS: the issues that fit, then `input: N more problems`."""
    text = format_issues(issues)
    shown = len(issues)
    while len(text) > MAX_ERROR_CHARS and shown > 1:
        shown -= 1
        text = format_issues((*issues[:shown], FieldIssue("input", f"{len(issues) - shown} more problems")))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class JobInputError(ValueError):
    """A job input the worker refuses, as `(field, reason)` issues."""

    def __init__(self, field: str, reason: str, *more: FieldIssue) -> None:
        self.issues: tuple[FieldIssue, ...] = (FieldIssue(field, reason), *more)
        super().__init__(_bounded(self.issues))

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


_SHOULD_BE = "Input should be "
# pydantic names the members of a union in an error's location (`tags.list[constrained-str]`); these are not fields
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "none", "bytes", "list", "dict"})


def _is_field_part(part: str | int) -> bool:
    return isinstance(part, int) or not (part in _UNION_MEMBERS or "[" in part or "-" in part)


def validation_issues(error: ValidationError) -> list[FieldIssue]:
    """One issue per field pydantic found wrong, named by the field's dotted location. The union members a value
    failed are merged into one reason (`tags: Input should be a valid string or a valid list`)."""
    reasons: dict[str, list[str]] = {}
    for problem in error.errors(include_url=False, include_input=False):
        parts = [str(part) for part in problem["loc"] if _is_field_part(part)]
        field = ".".join(part[:QUOTE_CHARS] for part in parts) or "input"
        message = "unknown field" if problem["type"] == "extra_forbidden" else problem["msg"]
        messages = reasons.setdefault(field, [])
        if (message := message.removeprefix("Value error, ")) not in messages:
            messages.append(message)
    issues = []
    for field, messages in reasons.items():
        if all(message.startswith(_SHOULD_BE) for message in messages):
            reason = _SHOULD_BE + " or ".join(message.removeprefix(_SHOULD_BE) for message in messages)
        else:
            reason = " or ".join(messages)
        issues.append(field_issue(field, reason))
    return issues
