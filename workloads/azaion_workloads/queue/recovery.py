"""Start-up recovery: the directories exist, a crash's leftovers are gone, the stored position is back.

Runs once before the first subscription. Temporary files are what an
interrupted atomic write leaves (:mod:`azaion_workloads.fsutil`); the files
they were replacing are intact, and the message that wrote them is replayed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from azaion_workloads.fsutil import TEMP_PREFIX
from azaion_workloads.layout import DataLayout
from azaion_workloads.queue.apply import MOVING_DIR
from azaion_workloads.queue.offsets import OffsetFile
from azaion_workloads.queue.state import ConsumerState

log = logging.getLogger(__name__)


def consumer_directories(layout: DataLayout, offset_file: Path) -> list[Path]:
    """Every directory the consumer writes to (created at start-up, swept of temporary files)."""
    return [*layout.annotation_dirs(), layout.deleted / MOVING_DIR, layout.quarantine, offset_file.parent]


def remove_temporary_files(directories: Iterable[Path]) -> int:
    removed = 0
    for directory in directories:
        if not directory.is_dir():
            continue  # nothing was ever written there
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def recover(layout: DataLayout, offsets: OffsetFile, stream: str, state: ConsumerState) -> None:
    """Prepare the directories and restore the stored offset and totals into ``state``."""
    directories = consumer_directories(layout, offsets.path)
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    removed = remove_temporary_files(directories)
    if removed:
        log.info("removed temporary files left by an interrupted run", extra={"count": removed})
    stored = offsets.load(stream)
    if stored is None:
        return
    state.processed_offset = state.committed_offset = stored.offset
    state.messages_processed = stored.messages_processed
    state.messages_quarantined = stored.messages_quarantined
    state.last_message_time = stored.last_message_time
    log.info("stored offset found", extra={"offset": stored.offset, "file": str(offsets.path)})
