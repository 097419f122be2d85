"""The disk effects of each message type, written so that replays converge.

After a crash the consumer replays every message after the last stored
offset, so a message may be applied again on top of its own (or later
messages') effects. Each operation therefore sets the state of the names it
touches instead of nudging it: a Created/Edited annotation ends up complete in
exactly one live directory (``data/`` for validators, ``data-seed/`` for
everyone else), a Validated one is moved from seed to data, a Deleted one is
moved to ``data_deleted/``. Moving a file that is already where it belongs, or
is missing, is a logged no-op. Replaying any suffix of the stream therefore
ends in the same tree as applying it once. For that, deletion is final: a
Created/Edited message for a name that only exists in ``data_deleted/``
updates the deleted copy instead of bringing the annotation back (names are
UUIDs the platform never reuses, so only duplicates and edits racing a
deletion arrive there).

Writes go through :mod:`azaion_workloads.fsutil`: temporary file, fsync,
rename, so a reader never sees half a file; the directory fsyncs that make
the renames durable are batched (:mod:`durability`) and done before the
offset covering them is stored.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from azaion_workloads.fsutil import atomic_write_bytes, durable_move
from azaion_workloads.layout import DataLayout, safe_name
from azaion_workloads.queue.durability import PendingDirectories
from azaion_workloads.queue.wire import (
    IMAGE_EXTENSIONS,
    AnnotationMessage,
    AnnotationStatus,
    BulkMessage,
    Message,
    label_text,
)

log = logging.getLogger(__name__)

LABEL_EXTENSION = ".txt"


@dataclass
class Effects:
    """What one message did, for logs and metrics."""

    written: int = 0
    moved: int = 0
    removed: int = 0
    missing: list[str] = field(default_factory=list)


class Applier:
    """Applies decoded messages to the annotation directories of one data root."""

    def __init__(self, layout: DataLayout, pending: PendingDirectories | None = None) -> None:
        self.layout = layout
        self.pending = PendingDirectories() if pending is None else pending

    # -- paths -------------------------------------------------------------

    def _images(self, base: Path, name: str) -> list[Path]:
        """The image files of ``name`` under ``base`` (any accepted extension)."""
        # Plain string paths: this runs for every message and pathlib costs more than the stats.
        stem = os.path.join(base, "images", safe_name(name))
        return [Path(path) for extension in IMAGE_EXTENSIONS if os.path.exists(path := stem + extension)]

    @staticmethod
    def _label(base: Path, name: str) -> Path:
        return base / "labels" / (safe_name(name) + LABEL_EXTENSION)

    def _has_label(self, base: Path, name: str) -> bool:
        return os.path.exists(os.path.join(base, "labels", safe_name(name) + LABEL_EXTENSION))

    # -- primitives --------------------------------------------------------

    def _write(self, path: Path, data: bytes, effects: Effects) -> None:
        atomic_write_bytes(path, data, sync_directory=False)
        self.pending.add(path.parent)
        effects.written += 1

    def _remove(self, path: Path, effects: Effects) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        self.pending.add(path.parent)
        effects.removed += 1

    def _move(self, source: Path, destination: Path, effects: Effects) -> bool:
        if durable_move(source, destination, sync_directories=False):
            self.pending.add(source.parent, destination.parent)
            effects.moved += 1
            return True
        return False

    def _move_annotation(self, name: str, source: Path, destination: Path, effects: Effects) -> bool:
        """Move the image(s) and the label of ``name``; False when nothing was there."""
        found = False
        for image in self._images(source, name):
            found |= self._move(image, destination / "images" / image.name, effects)
        label = self._label(source, name)
        found |= self._move(label, self._label(destination, name), effects)
        return found

    # -- message types -----------------------------------------------------

    def apply(self, message: Message) -> Effects:
        effects = Effects()
        if isinstance(message, AnnotationMessage):
            self._annotation(message, effects)
        elif isinstance(message, BulkMessage) and message.status is AnnotationStatus.VALIDATED:
            for name in message.names:
                if not self._move_annotation(name, self.layout.seed, self.layout.data, effects):
                    effects.missing.append(name)
        elif isinstance(message, BulkMessage) and message.status is AnnotationStatus.DELETED:
            for name in message.names:
                # Seed first, then data: if a name lives in both (a replay cut
                # short), the validated version is the one that is kept.
                moved = self._move_annotation(name, self.layout.seed, self.layout.deleted, effects)
                moved |= self._move_annotation(name, self.layout.data, self.layout.deleted, effects)
                if not moved:
                    effects.missing.append(name)
        else:  # pragma: no cover - the decoder produces nothing else
            raise TypeError(f"cannot apply {type(message).__name__} {message.status!r}")
        if effects.missing and isinstance(message, BulkMessage):
            log.info(
                "nothing to move for %d name(s): already moved or never seen",
                len(effects.missing),
                extra={"status": message.status.label, "names": effects.missing[:20]},
            )
        return effects

    def _is_deleted(self, name: str) -> bool:
        """In data_deleted/ and in no live directory: deleted for good."""
        deleted = self.layout.deleted
        if not (self._has_label(deleted, name) or self._images(deleted, name)):
            return False  # the common case, answered first
        return not any(
            self._has_label(base, name) or self._images(base, name) for base in (self.layout.data, self.layout.seed)
        )

    def _annotation(self, message: AnnotationMessage, effects: Effects) -> None:
        """Created/Edited: the annotation ends up whole in the directory its role picks.

        A deleted annotation stays deleted: an edit (or a duplicate create)
        that arrives after its deletion updates the copy in data_deleted/. This
        is what makes replays converge: otherwise replaying a Deleted would move
        files written by a *later* edit into data_deleted/.
        """
        name = message.name
        others: tuple[Path, ...]
        if self._is_deleted(name):
            target, others = self.layout.deleted, ()
        elif message.by_validator:
            target, others = self.layout.data, (self.layout.seed,)
        else:
            target, others = self.layout.seed, (self.layout.data,)
        if message.image is not None:
            destination = target / "images" / message.image_file
            self._write(destination, message.image, effects)
            for stale in self._images(target, name):
                if stale != destination:
                    self._remove(stale, effects)
            for other in others:
                for stale in self._images(other, name):
                    self._remove(stale, effects)
        elif not self._images(target, name):
            # An edit carries no image: bring the existing one along (seed -> data
            # when a validator edits, data -> seed when an operator does).
            moved = False
            for other in others:
                for image in self._images(other, name):
                    moved |= self._move(image, target / "images" / image.name, effects)
            if not moved:
                effects.missing.append(name)
                log.warning(
                    "edited annotation has no image: label written alone",
                    extra={"annotation": name, "directory": target.name},
                )
        else:
            for other in others:
                for stale in self._images(other, name):
                    self._remove(stale, effects)
        self._write(self._label(target, name), label_text(message.detections).encode(), effects)
        for other in others:
            self._remove(self._label(other, name), effects)
