"""The disk effects of each message type, written so that replays converge.

After a crash the consumer replays every message after the last stored
offset, so a message may be applied again on top of its own (or later
messages') effects. Each operation therefore sets the state of the names it
touches instead of nudging it: a Created/Edited annotation ends up complete in
exactly one live directory (``data/`` for validators, ``data-seed/`` for
everyone else), a Validated one is moved from seed to data, a Deleted one is
moved to ``data_deleted/``. Moving a file that is already where it belongs, or
is missing, is a logged no-op.

Deleted copies are moved, never removed or overwritten. The first deletion of
a name keeps the original layout (``data_deleted/images/<name>.jpg``); a later
deletion whose copy differs lands beside it as ``<name>~<digest>`` (the first
16 hex digits of :func:`copy_digest`, so the same copy always gets the same
name). A Created/Edited message that carries its image brings a deleted name
back to life; an Edited message without an image needs a live image to go
with its label, and is refused otherwise (an edit of a deleted annotation, or
of one never seen): no label is written without its image.

Two rules keep replays exact around deletions. A deletion records where it is
moving a copy (``data_deleted/.moving/<name>``) before it moves the first
file, so a deletion cut short by a crash finishes into the same place. And
the consumer stores its offset before every message that deletes or revives a
name (:meth:`Applier.needs_barrier`): a replay never re-applies a deletion on
top of a later revival, nor an earlier message on top of a later deletion.

Every file operation goes through a :class:`~azaion_workloads.queue.staging.StagedTree`:
contents under a temporary name, fsynced, then renamed, so a reader never sees
half a file; the consumer flushes a whole batch of messages at once (group
commit), and the directory fsyncs that make the renames durable are batched
(:mod:`durability`) and done before the offset covering them is stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from azaion_workloads.layout import DataLayout, safe_name
from azaion_workloads.queue.staging import StagedTree
from azaion_workloads.queue.wire import (
    IMAGE_EXTENSIONS,
    AnnotationMessage,
    AnnotationStatus,
    BulkMessage,
    MalformedMessage,
    Message,
    label_text,
)

log = logging.getLogger(__name__)

LABEL_EXTENSION = ".txt"
#: Between a name and the digest of a later deleted copy: never part of a safe name.
DELETED_COPY_SEPARATOR = "~"
#: Under data_deleted/: one small file per deletion in progress (its destination).
MOVING_DIR = ".moving"
_DIGEST_SUFFIX = re.compile(re.escape(DELETED_COPY_SEPARATOR) + "[0-9a-f]{16}")


@dataclass
class Effects:
    """What one message did, for logs and metrics."""

    written: int = 0
    moved: int = 0
    removed: int = 0
    missing: list[str] = field(default_factory=list)


class Applier:
    """Applies decoded messages to the annotation directories of one data root."""

    def __init__(self, layout: DataLayout, tree: StagedTree) -> None:
        self.layout = layout
        #: Every file operation goes through the batch (see :mod:`staging`).
        self.tree = tree

    # -- paths -------------------------------------------------------------

    def _images(self, base: Path, name: str) -> list[Path]:
        """The image files of ``name`` under ``base`` (any accepted extension)."""
        # Plain string paths: this runs for every message and pathlib costs more than the stats.
        stem = os.path.join(base, "images", safe_name(name))
        exists = self.tree.exists
        return [Path(path) for extension in IMAGE_EXTENSIONS if exists(path := stem + extension)]

    @staticmethod
    def _label(base: Path, name: str) -> Path:
        return base / "labels" / (safe_name(name) + LABEL_EXTENSION)

    # -- primitives --------------------------------------------------------

    def _write(self, path: Path, data: bytes, effects: Effects) -> None:
        self.tree.write(path, data)
        effects.written += 1

    def _remove(self, path: Path, effects: Effects) -> None:
        if self.tree.remove(path):
            effects.removed += 1

    def _move(self, source: Path, destination: Path, effects: Effects) -> bool:
        if self.tree.move(source, destination):
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
                if not self._delete(name, effects):
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

    def needs_barrier(self, message: Message) -> bool:
        """Whether the stored offset must catch up before ``message`` is applied (see the module doc)."""
        if isinstance(message, BulkMessage):
            return message.status is AnnotationStatus.DELETED
        return self._has_deleted_copy(message.name)

    def _has_deleted_copy(self, name: str) -> bool:
        return bool(self._annotation_files(self.layout.deleted, name))

    def _live_images(self, name: str) -> list[Path]:
        return [*self._images(self.layout.data, name), *self._images(self.layout.seed, name)]

    def _annotation(self, message: AnnotationMessage, effects: Effects) -> None:
        """Created/Edited: the annotation ends up whole in the directory its role picks."""
        name = message.name
        if message.by_validator:
            target, other = self.layout.data, self.layout.seed
        else:
            target, other = self.layout.seed, self.layout.data
        if message.image is None and not self._live_images(name):
            # Checked before anything is written: a refused message leaves no trace.
            if self._has_deleted_copy(name):
                raise MalformedMessage(
                    "edit-of-deleted", "an edit without an image for a deleted annotation (deleted copies are kept)"
                )
            raise MalformedMessage("edit-without-image", "an edit without an image for an annotation never created")
        if message.image is not None:
            destination = target / "images" / message.image_file
            self._write(destination, message.image, effects)
            for stale in [*self._images(target, name), *self._images(other, name)]:
                if stale != destination:
                    self._remove(stale, effects)
        elif not self._images(target, name):
            # An edit carries no image: bring the existing one along (seed -> data
            # when a validator edits, data -> seed when an operator does).
            for image in self._images(other, name):
                self._move(image, target / "images" / image.name, effects)
        else:
            for stale in self._images(other, name):
                self._remove(stale, effects)
        self._write(self._label(target, name), label_text(message.detections).encode(), effects)
        self._remove(self._label(other, name), effects)

    # -- deletion ----------------------------------------------------------

    def _delete(self, name: str, effects: Effects) -> bool:
        """Move every live copy of ``name`` into data_deleted/; False when there was none."""
        found = False
        interrupted = self._read_intent(name)
        # Data first: when a name lives in both (a replay cut short), the
        # validated version takes the original layout's place.
        for base in (self.layout.data, self.layout.seed):
            files = self._annotation_files(base, name)
            if interrupted is not None and interrupted[0] == base.name:
                stem = interrupted[1]  # finish the move a crash cut short, into the same place
            elif files:
                stem = self._deleted_stem(name, files)
                self._write_intent(name, base.name, stem)
            else:
                continue
            found |= bool(files)
            for kind, path in files.items():
                directory = self.layout.deleted / kind.split("/", 1)[0]
                self._move(path, directory / (stem + path.name[len(name) :]), effects)
            self._remove(self._intent(name), Effects())
        return found

    def _annotation_files(self, base: Path, name: str) -> dict[str, Path]:
        """``images/<ext>`` / ``labels/.txt`` -> path, for the files of ``name`` under ``base``."""
        files = {f"images/{path.suffix}": path for path in self._images(base, name)}
        label = self._label(base, name)
        if self.tree.exists(label):
            files[f"labels/{LABEL_EXTENSION}"] = label
        return files

    def _deleted_stem(self, name: str, files: dict[str, Path]) -> str:
        """The original name for the first deleted copy (or the same copy again), else name~digest."""
        kept = self._annotation_files(self.layout.deleted, name)
        if not kept:
            return name
        read = self.tree.read_bytes
        digest = copy_digest({kind: read(path) for kind, path in files.items()})
        if copy_digest({kind: read(path) for kind, path in kept.items()}) == digest:
            return name  # this very deletion, replayed
        return f"{name}{DELETED_COPY_SEPARATOR}{digest[:16]}"

    def _intent(self, name: str) -> Path:
        return self.layout.deleted / MOVING_DIR / safe_name(name)

    def _write_intent(self, name: str, base: str, stem: str) -> None:
        self._write(self._intent(name), f"{base}\n{stem}\n".encode(), Effects())

    def _read_intent(self, name: str) -> tuple[str, str] | None:
        """(live directory, destination stem) of a deletion of ``name`` a crash interrupted."""
        try:
            base, stem = self.tree.read_bytes(self._intent(name)).decode("utf-8").split()
        except (FileNotFoundError, ValueError):
            return None
        if stem != name and not _DIGEST_SUFFIX.fullmatch(stem.removeprefix(name)):
            return None  # not written by _write_intent: ignore rather than trust it
        return base, stem


def copy_digest(files: dict[str, bytes]) -> str:
    """SHA-256 of one annotation's files (``images/.jpg``, ``labels/.txt`` -> bytes)."""
    digest = hashlib.sha256()
    for key in sorted(files):
        data = files[key]
        digest.update(f"{key}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()
