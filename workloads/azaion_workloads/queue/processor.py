"""One stream entry in, its durable effect out: applied, or quarantined with a reason.

This is the synchronous heart of the consumer (it runs in a worker thread so
the event loop keeps serving heartbeats). Input can never make it raise: a
message that cannot be decoded or applied goes to quarantine. Only a failure
of the environment (the disk) propagates, because no message is to blame and
the stream must not move past it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from azaion_workloads.classes import ClassCatalog
from azaion_workloads.layout import DataLayout
from azaion_workloads.queue.apply import Applier, Effects
from azaion_workloads.queue.durability import Durability, PendingDirectories
from azaion_workloads.queue.quarantine import Quarantine
from azaion_workloads.queue.staging import Listings, StagedTree
from azaion_workloads.queue.wire import (
    AnnotationMessage,
    AnnotationStatus,
    MalformedMessage,
    decode,
    status_property,
)

log = logging.getLogger(__name__)

#: How often classes.json is looked at (an edit is picked up within this).
CATALOG_CHECK_SECONDS = 1.0


class BarrierFailed(Exception):
    """Storing the offset before a message failed: the environment's fault, never the message's."""


@dataclass(frozen=True)
class Outcome:
    """``kind`` is the message type (or ``unknown``); ``result`` applied/quarantined."""

    kind: str
    result: str
    effects: Effects | None = None
    reason: str | None = None
    seconds: float = 0.0


class MessageProcessor:
    """Decode and apply entries one by one.

    With ``group_commit`` the file operations of many messages wait in a
    :class:`StagedTree` until :meth:`sync` (the consumer's offset commit);
    without it each message's operations reach the disk before ``process``
    returns (a replay by hand, the tests of single messages).
    """

    def __init__(
        self,
        layout: DataLayout,
        stream: str,
        group_commit: bool = False,
        durability: Durability = "fsync",
        sole_writer: bool = False,
    ) -> None:
        """``sole_writer``: nothing else changes the annotation directories meanwhile (see :class:`Listings`)."""
        self.layout = layout
        self.pending = PendingDirectories(durability)
        self.tree = StagedTree(self.pending, listings=Listings() if sole_writer else None)
        self.applier = Applier(layout, self.tree)
        self.quarantine = Quarantine(layout.quarantine, stream, self.tree)
        self.group_commit = group_commit
        self._catalog_checked = 0.0
        self._catalog_stamp: tuple[int, int] | None = None
        self._valid_ids = ClassCatalog.default().valid_ids()
        self._reload_classes()

    def _reload_classes(self) -> None:
        """Pick up a new classes.json without a restart (mtime and size, checked once a second at most)."""
        now = time.monotonic()
        if now - self._catalog_checked < CATALOG_CHECK_SECONDS:
            return
        self._catalog_checked = now
        path = self.layout.classes_file
        try:
            info = os.stat(path)
            stamp: tuple[int, int] | None = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._catalog_stamp and self._catalog_stamp is not None:
            return
        try:
            self._valid_ids = ClassCatalog.load(path).valid_ids()
        except Exception as error:  # a bad file keeps the last good catalogue
            log.error("cannot read %s, keeping the previous classes: %s", path, error)
        self._catalog_stamp = stamp

    def sync(self) -> int:
        """Make every effect so far durable (before an offset covering it is stored); directories synced."""
        self.tree.flush()
        return self.pending.sync()

    def process(
        self,
        raw: bytes,
        offset: int,
        stored_at_ms: int | None,
        barrier: Callable[[], None] | None = None,
    ) -> Outcome:
        """Apply or quarantine one entry; call ``barrier`` first when it deletes or revives a name.

        ``barrier`` stores the offset of everything processed so far (see
        :meth:`Applier.needs_barrier`); without one (a replay by hand, a
        benchmark) the message is simply applied.
        """
        started = time.perf_counter()
        self._reload_classes()
        kind = "unknown"
        try:
            message = decode(raw, self._valid_ids)
            kind = message.status.label
            if barrier is not None and self.applier.needs_barrier(message):
                barrier()
            effects = self.applier.apply(message)
            if not self.group_commit:
                self.tree.flush()
        except MalformedMessage as error:
            if error.status is not None:
                kind = error.status.label
            return self._quarantine(raw, offset, stored_at_ms, error, kind, started)
        except (OSError, BarrierFailed):
            raise  # the disk failed, not the message: do not move past it
        except Exception as error:  # a defect here must not stop the stream either
            log.exception("unexpected error on message at offset %d", offset)
            wrapped = MalformedMessage("internal", f"{type(error).__name__} while processing")
            return self._quarantine(raw, offset, stored_at_ms, wrapped, kind, started)
        seconds = time.perf_counter() - started
        details: dict[str, object] = {"offset": offset, "type": kind, "seconds": round(seconds, 4)}
        if isinstance(message, AnnotationMessage):
            details.update(
                annotation=message.name,
                validator=message.by_validator,
                detections=len(message.detections),
            )
        elif message.status in (AnnotationStatus.VALIDATED, AnnotationStatus.DELETED):
            details["names"] = len(message.names)
        log.debug("applied", extra=details)
        return Outcome(kind, "applied", effects=effects, seconds=seconds)

    def _quarantine(
        self,
        raw: bytes,
        offset: int,
        stored_at_ms: int | None,
        error: MalformedMessage,
        kind: str,
        started: float,
    ) -> Outcome:
        self.quarantine.put(offset, raw, error, stored_at_ms, status_property(raw))
        if not self.group_commit:
            self.tree.flush()
        log.warning(
            "message quarantined",
            extra={"offset": offset, "type": kind, "reason": str(error), "kind": error.kind},
        )
        return Outcome(kind, "quarantined", reason=error.kind, seconds=time.perf_counter() - started)
