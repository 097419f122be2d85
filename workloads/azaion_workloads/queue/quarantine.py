"""Where messages that cannot be applied go: nothing is dropped silently.

Each quarantined message becomes two files named after its stream offset:
``<offset>.msg`` (the stream entry exactly as received, so it can be examined
or replayed by hand) and ``<offset>.json`` (offset, stream, reason). The
record holds nothing that changes between runs, so a replay after a crash
rewrites identical files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from azaion_contract.timefmt import rfc3339, rfc3339_from_millis
from azaion_workloads.fsutil import atomic_write_bytes
from azaion_workloads.queue.durability import PendingDirectories
from azaion_workloads.queue.wire import MalformedMessage


def record_name(offset: int) -> str:
    # Zero padding keeps a directory listing in stream order.
    return f"{offset:020d}"


class Quarantine:
    def __init__(self, directory: Path, stream: str, pending: PendingDirectories | None = None) -> None:
        self.directory = directory
        self.stream = stream
        self.pending = PendingDirectories() if pending is None else pending

    def put(
        self,
        offset: int,
        raw: bytes,
        error: MalformedMessage,
        stored_at_ms: int | None,
        status_property: str | None,
    ) -> Path:
        """Keep the message and why it was refused; return the record's path."""
        stem = record_name(offset)
        atomic_write_bytes(self.directory / f"{stem}.msg", raw, sync_directory=False)
        record = {
            "offset": offset,
            "stream": self.stream,
            "kind": error.kind,
            "reason": str(error),
            "annotationStatus": status_property,
            "storedAt": _iso(stored_at_ms),
            "bytes": len(raw),
        }
        # The record is written last: a .json file means the .msg beside it is whole.
        path = self.directory / f"{stem}.json"
        atomic_write_bytes(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode(), sync_directory=False)
        self.pending.add(self.directory)
        return path


def _iso(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    if milliseconds % 1000 == 0:
        # Whole seconds carry no fraction, as records always had (replays rewrite identical files).
        return rfc3339(dt.datetime.fromtimestamp(milliseconds // 1000, dt.UTC))
    return rfc3339_from_millis(milliseconds)
