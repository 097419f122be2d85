"""The stored stream position: a small YAML file, replaced atomically.

The file is written only after the effects of every message up to its offset
are durable, so after any crash the consumer resumes at ``offset + 1`` and at
worst replays a few messages (which :mod:`apply` makes harmless). It also
carries the running totals, so they stay consistent with the offset across
restarts: replayed messages are counted once.

Writes are batched (every N messages or T milliseconds) because each one
costs an fsync; the original wrote after every message.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from azaion_contract.timefmt import rfc3339
from azaion_workloads.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)


class OffsetState(BaseModel):
    """Contents of the offset file (camelCase keys, like the status fields)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    stream: str
    offset: int = Field(ge=0)
    messages_processed: int = Field(0, alias="messagesProcessed", ge=0)
    messages_quarantined: int = Field(0, alias="messagesQuarantined", ge=0)
    last_message_time: dt.datetime | None = Field(None, alias="lastMessageTime")
    updated_at: dt.datetime | None = Field(None, alias="updatedAt")


class OffsetFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, stream: str) -> OffsetState | None:
        """The stored state for ``stream``; None when absent, unreadable or for another stream."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            state = OffsetState.model_validate(yaml.safe_load(text))
        except (yaml.YAMLError, ValidationError) as error:
            log.error(
                "offset file %s is unreadable; falling back to the server's offset: %s",
                self.path,
                error.__class__.__name__,
            )
            return None
        if state.stream != stream:
            log.warning(
                "offset file %s belongs to stream %r, not %r: ignored",
                self.path,
                state.stream,
                stream,
            )
            return None
        return state

    def save(self, state: OffsetState) -> None:
        document = state.model_dump(by_alias=True, mode="json", exclude_none=True)
        document["updatedAt"] = rfc3339(milliseconds=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, yaml.safe_dump(document, sort_keys=False).encode())


class CommitPolicy:
    """Decides when the pending offset is due: every N messages or T seconds."""

    def __init__(self, every: int, interval_seconds: float) -> None:
        self.every = every
        self.interval = interval_seconds
        self.pending = 0
        self._first_pending_at: float | None = None

    def note(self) -> None:
        self.pending += 1
        if self._first_pending_at is None:
            self._first_pending_at = time.monotonic()

    def due(self, now: float | None = None) -> bool:
        if self.pending == 0:
            return False
        if self.pending >= self.every:
            return True
        now = time.monotonic() if now is None else now
        return self._first_pending_at is not None and now - self._first_pending_at >= self.interval

    def seconds_until_due(self, now: float | None = None) -> float | None:
        """How long until :meth:`due` turns true by time alone; None with nothing pending."""
        if self.pending == 0 or self._first_pending_at is None:
            return None
        if self.pending >= self.every:
            return 0.0
        now = time.monotonic() if now is None else now
        return max(0.0, self._first_pending_at + self.interval - now)

    def reset(self) -> None:
        self.pending = 0
        self._first_pending_at = None
