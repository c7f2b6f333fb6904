"""The wire form of a refused job input: `"<field>: <reason>; <field>: <reason>"`.

The worker formats its input errors here and callers parse them back here, so the one string RunPod carries in a
job's `error` keeps the fields it names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SEPARATOR = "; "
_CLAUSE = re.compile(r"^([A-Za-z_][\w.\[\]-]*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class FieldIssue:
    """One problem with one input field; `field` is dotted for nested values (`loras.0.path`)."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def format_issues(issues: Iterable[FieldIssue]) -> str:
    """The error text RunPod callers see. A reason's own "; " is written ", " so that every "; " in the text
    separates two issues and `parse_issues` gives back exactly these."""
    return SEPARATOR.join(f"{issue.field}: {issue.reason.replace(SEPARATOR, ', ')}" for issue in issues)


def parse_issues(text: str) -> list[FieldIssue]:
    """The issues of an error text; clauses that name no field (an internal error, a cancel) are left out."""
    issues = []
    for clause in text.split(SEPARATOR):
        match = _CLAUSE.match(clause)
        if match:
            issues.append(FieldIssue(match.group(1), match.group(2)))
    return issues
