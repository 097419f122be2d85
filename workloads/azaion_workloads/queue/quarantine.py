"""Where messages that cannot be applied go: nothing is dropped silently.

Each quarantined message becomes two files named after its stream offset:
``<offset>.msg`` (the stream entry exactly as received, so it can be examined
or replayed by hand) and ``<offset>.json`` (offset, stream, reason). The
record holds nothing that changes between runs, so a replay after a crash
rewrites identical files. Both are staged in the batch's
:class:`~azaion_workloads.queue.staging.StagedTree` like every other write,
so a quarantined message costs no fsync of its own.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from azaion_contract.timefmt import rfc3339, rfc3339_from_millis
from azaion_workloads.queue.durability import PendingDirectories
from azaion_workloads.queue.staging import StagedTree
from azaion_workloads.queue.wire import MalformedMessage


def record_name(offset: int) -> str:
    # Zero padding keeps a directory listing in stream order.
    return f"{offset:020d}"


class Quarantine:
    def __init__(self, directory: Path, stream: str, tree: StagedTree | None = None) -> None:
        """With ``tree`` the records wait for its flush; without one each is durable when ``put`` returns."""
        self.directory = directory
        self.stream = stream
        self._own_tree = tree is None
        self.tree = StagedTree(PendingDirectories()) if tree is None else tree

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
        self.tree.write(self.directory / f"{stem}.msg", raw)
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
        self.tree.write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        if self._own_tree:
            self.tree.flush()
            self.tree.pending.sync()
        return path


def _iso(milliseconds: int | None) -> str | None:
    if not milliseconds:
        return None
    if milliseconds % 1000 == 0:
        # Whole seconds carry no fraction, as records always had (replays rewrite identical files).
        return rfc3339(dt.datetime.fromtimestamp(milliseconds // 1000, dt.UTC))
    return rfc3339_from_millis(milliseconds)
