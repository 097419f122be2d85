"""RFC 3339 times, the one way every status and record writes them."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime | None = None, *, milliseconds: bool = False) -> str:
    """``2026-01-31T12:00:00Z`` (UTC, second precision unless ``milliseconds``)."""
    moment = (moment or now()).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds" if milliseconds else "seconds").replace("+00:00", "Z")


def rfc3339_from_millis(epoch_milliseconds: int) -> str:
    """A broker timestamp (milliseconds since the epoch) as RFC 3339 with milliseconds."""
    return rfc3339(datetime.fromtimestamp(epoch_milliseconds / 1000, UTC), milliseconds=True)


def parse_rfc3339(value: str) -> datetime:
    """The inverse of :func:`rfc3339` (also accepts an explicit offset)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_rfc3339_or_none(value: str | None) -> datetime | None:
    """:func:`parse_rfc3339`, or None for a time that is absent or not RFC 3339.

    For times read back from a status, which users and other writers can edit:
    an unset or garbled time counts as no time instead of failing the caller.
    A time without an offset is refused too (RFC 3339 requires one): it could
    not be compared with the aware times used everywhere else.
    """
    if not value or not isinstance(value, str):
        return None
    try:
        moment = parse_rfc3339(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
