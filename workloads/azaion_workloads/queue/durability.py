"""Directory fsyncs, batched: one per directory per offset commit, not per file.

A file's contents are fsynced before its rename (a reader never sees half a
file, even after a power loss), but the rename itself only becomes durable
with an fsync of its directory. That fsync is needed before the offset that
covers the message is stored, not before the next message: so the consumer
collects the directories touched since the last commit and syncs each once,
right before writing the offset. A power loss in between loses at most
renames whose messages are replayed anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from azaion_workloads.fsutil import fsync_dir


class PendingDirectories:
    def __init__(self) -> None:
        self._paths: set[str] = set()

    def add(self, *paths: str | os.PathLike[str]) -> None:
        self._paths.update(os.fspath(path) for path in paths)

    def __len__(self) -> int:
        return len(self._paths)

    def sync(self) -> int:
        """fsync every pending directory; the number synced."""
        paths = sorted(self._paths)
        for path in paths:
            fsync_dir(Path(path))
            self._paths.discard(path)
        return len(paths)
