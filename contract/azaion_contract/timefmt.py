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
