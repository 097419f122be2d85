"""The barrier of a batch: what makes its renames durable before the offset covering them is stored.

A file's contents are made durable before its rename (a reader never sees
half a file, even after a power loss), but the rename itself only becomes
durable with its directory. That is needed before the offset that covers the
message is stored, not before the next message: so the consumer collects
the directories touched since the last commit and makes them durable once,
right before writing the offset. A power loss in between loses at most
renames whose messages are replayed anyway.

Two ways to do it (``QUEUE_DURABILITY``): ``syncfs`` (the default on Linux)
syncs each filesystem the batch touched once, one journal commit for the
whole batch; ``fsync`` syncs each touched directory, one fsync each. syncfs
also flushes what other processes wrote to the same filesystem, so on a
volume shared with heavy writers ``fsync`` can be the cheaper barrier.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

from azaion_workloads.fsutil import SYNCFS_AVAILABLE, fsync_dir, syncfs

log = logging.getLogger(__name__)

Durability = Literal["syncfs", "fsync"]


def usable(durability: Durability) -> Durability:
    """``durability``, or ``fsync`` where syncfs(2) does not exist."""
    if durability == "syncfs" and not SYNCFS_AVAILABLE:
        log.warning("syncfs(2) is not available here: making batches durable file by file")
        return "fsync"
    return durability


def sync_filesystems(paths: dict[int, str]) -> None:
    """syncfs once per filesystem: ``paths`` maps a device number to a directory on it."""
    for path in paths.values():
        syncfs(path)


class PendingDirectories:
    def __init__(self, durability: Durability = "fsync") -> None:
        self.durability = usable(durability)
        self._paths: set[str] = set()

    def add(self, *paths: str | os.PathLike[str]) -> None:
        self._paths.update(os.fspath(path) for path in paths)

    def __len__(self) -> int:
        return len(self._paths)

    def sync(self) -> int:
        """Make every pending directory durable; the number of directories."""
        paths = sorted(self._paths)
        if self.durability == "syncfs":
            devices: dict[int, str] = {}
            for path in paths:
                devices.setdefault(os.stat(path).st_dev, path)
            sync_filesystems(devices)
            self._paths.clear()
            return len(paths)
        for path in paths:
            fsync_dir(Path(path))
            self._paths.discard(path)
        return len(paths)
