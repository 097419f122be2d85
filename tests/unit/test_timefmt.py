"""RFC 3339 times: written one way, read back safely from statuses others can edit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from azaion_contract.timefmt import parse_rfc3339, parse_rfc3339_or_none, rfc3339, rfc3339_from_millis

pytestmark = pytest.mark.unit

MOMENT = datetime(2026, 1, 31, 12, 0, 5, 123456, tzinfo=UTC)


def test_written_times_read_back() -> None:
    assert rfc3339(MOMENT) == "2026-01-31T12:00:05Z"
    assert rfc3339(MOMENT, milliseconds=True) == "2026-01-31T12:00:05.123Z"
    assert parse_rfc3339("2026-01-31T12:00:05Z") == MOMENT.replace(microsecond=0)
    assert parse_rfc3339(rfc3339_from_millis(1_769_860_805_123)) == datetime(2026, 1, 31, 12, 0, 5, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-31T12:00:05Z", datetime(2026, 1, 31, 12, 0, 5, tzinfo=UTC)),
        ("2026-01-31T12:00:05.123Z", datetime(2026, 1, 31, 12, 0, 5, 123000, tzinfo=UTC)),
        ("2026-01-31T14:00:05+02:00", datetime(2026, 1, 31, 14, 0, 5, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_or_none_parses_what_parse_rfc3339_parses(value: str, expected: datetime) -> None:
    assert parse_rfc3339_or_none(value) == expected == parse_rfc3339(value)
    assert parse_rfc3339_or_none(value).tzinfo is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",  # no 13th month
        "2026-01-31T12:00:05",  # no offset: not comparable with the aware times the operator uses
        "2026-01-31",
        1_769_860_805,  # a number where a time belongs (statuses are dicts anyone can patch)
    ],
)
def test_or_none_is_none_for_an_absent_or_bad_time(value: object) -> None:
    assert parse_rfc3339_or_none(value) is None  # type: ignore[arg-type]
