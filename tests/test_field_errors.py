"""The wire form of a refusal round-trips: what the worker formats, a caller parses back to the same issues."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.schemas import JobInputError, parse_job
from worker_client.field_errors import FieldIssue, format_issues, parse_issues

FIELD = st.from_regex(r"[a-z_][a-z0-9_]{0,12}(\.[0-9]{1,2})?", fullmatch=True)
REASON = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60).filter(
    lambda text: text.strip() == text and text
)


@given(st.lists(st.builds(FieldIssue, FIELD, REASON), min_size=1, max_size=4))
def test_formatted_issues_parse_back_to_their_fields(issues: list[FieldIssue]) -> None:
    parsed = parse_issues(format_issues(issues))
    assert [issue.field for issue in parsed] == [issue.field for issue in issues]


def test_a_reason_holding_a_semicolon_stays_one_issue() -> None:
    try:
        parse_job({"type": "image", "prompt": "x", "width": 100, "steps": 0})
    except JobInputError as error:
        text = str(error)
    assert [issue.field for issue in parse_issues(text)] == ["width", "steps"]
    assert "nearest" in text


def test_unnamed_clauses_are_left_out() -> None:
    assert parse_issues("internal error: RuntimeError: boom") == []
    assert parse_issues("width: too big; internal error") == [FieldIssue("width", "too big")]
