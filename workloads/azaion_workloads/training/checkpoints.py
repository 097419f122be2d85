"""Verified checkpoint copies, and choosing the checkpoint to resume from.

ultralytics writes ``weights/last.pt`` in place, so a kill during that write
leaves a truncated file. After every save the workload therefore loads the
new checkpoint and keeps a copy under ``checkpoints/epoch-NNNN.pt`` written
atomically (temp + fsync + rename). Mid-epoch checkpoints (see
:mod:`.resumable`) are verified the same way before they are written, as
``checkpoints/epoch-NNNN-batch-BBBBBB.pt``: NNNN epochs and BBBBBB batches of
the next one done. On start the newest checkpoint that loads wins; a damaged
one is skipped with a log line naming it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_workloads.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_COPY_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")
_MID_NAME = re.compile(r"^epoch-(\d{4,})-batch-(\d{6,})\.pt$")
KEEP_COPIES = 3
#: The checkpoint key that makes an ultralytics checkpoint a mid-epoch one (see :mod:`.resumable`).
MID_EPOCH_KEY = "azaion_mid_epoch"


@dataclass(frozen=True, order=True)
class Position:
    """A point in training: ``epochs`` completed and ``batches`` of the next epoch done."""

    epochs: int
    batches: int = 0


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    #: ultralytics' 0-based index of the last completed epoch (-1: finished, stripped)
    epoch: int
    sha256: str
    #: Batches of the following epoch done: 0 for an end-of-epoch checkpoint.
    batch: int = 0

    @property
    def epochs_done(self) -> int:
        return self.epoch + 1

    @property
    def position(self) -> Position:
        return Position(self.epochs_done, self.batch)


def load_checkpoint_bytes(data: bytes) -> dict[str, Any]:
    """Unpickle a checkpoint on the CPU; raise on anything that is not one."""
    import torch

    checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint:
        raise ValueError("not an ultralytics training checkpoint")
    if checkpoint.get("ema") is None and checkpoint.get("model") is None:
        raise ValueError("checkpoint holds no model")
    return checkpoint


def try_load(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(checkpoint, "") when ``path`` loads, else (None, why)."""
    try:
        data = path.read_bytes()
        return load_checkpoint_bytes(data), hashlib.sha256(data).hexdigest()
    except Exception as error:  # unpickling raises many kinds on damaged files
        return None, f"{type(error).__name__}: {error}"


def mid_epoch_position(checkpoint: dict[str, Any]) -> Position | None:
    """Where a loaded mid-epoch checkpoint stands; None for an end-of-epoch one."""
    state = checkpoint.get(MID_EPOCH_KEY)
    if not isinstance(state, dict):
        return None
    return Position(int(state["epoch"]), int(state["done"]))


def held_position(checkpoint: dict[str, Any]) -> Position:
    """Where a loaded checkpoint stands, from its content (not its name)."""
    return mid_epoch_position(checkpoint) or Position(int(checkpoint["epoch"]) + 1)


def name_position(name: str) -> Position | None:
    """The position a verified copy's file name gives (``epoch-NNNN[-batch-BBBBBB].pt``); None for other names."""
    match = _COPY_NAME.match(name)
    if match:
        return Position(int(match.group(1)))
    match = _MID_NAME.match(name)
    if match:
        return Position(int(match.group(1)), int(match.group(2)))
    return None


class CheckpointStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.directory = run_dir / "checkpoints"
        self.last = run_dir / "weights" / "last.pt"
        self.best = run_dir / "weights" / "best.pt"

    def copy_path(self, epochs_done: int) -> Path:
        return self.directory / f"epoch-{epochs_done:04d}.pt"

    def mid_epoch_path(self, position: Position) -> Path:
        return self.directory / f"epoch-{position.epochs:04d}-batch-{position.batches:06d}.pt"

    def path_at(self, position: Position) -> Path:
        """Where the verified copy of ``position`` goes: end-of-epoch (batch 0) or mid-epoch."""
        return self.mid_epoch_path(position) if position.batches else self.copy_path(position.epochs)

    def keep_verified(self, source: Path, expected_epoch: int) -> Checkpoint:
        """Load the freshly written ``source`` and keep an atomic copy of it."""
        data = source.read_bytes()
        checkpoint = load_checkpoint_bytes(data)
        if checkpoint["epoch"] != expected_epoch:
            raise ValueError(f"{source} holds epoch {checkpoint['epoch']}, expected {expected_epoch}")
        target = self.copy_path(expected_epoch + 1)
        atomic_write_bytes(target, data)
        for old in self.copies()[KEEP_COPIES:]:
            old.unlink(missing_ok=True)
        for mid, position in self.mid_epoch_copies():
            if position.epochs <= expected_epoch:  # the epoch it was in is complete now
                mid.unlink(missing_ok=True)
        return Checkpoint(target, expected_epoch, hashlib.sha256(data).hexdigest())

    def keep_mid_epoch(self, data: bytes) -> Checkpoint:
        """Verify a serialized mid-epoch checkpoint, write it atomically, drop the older mid-epoch ones."""
        position = mid_epoch_position(load_checkpoint_bytes(data))
        if position is None:
            raise ValueError("not a mid-epoch checkpoint")
        target = self.mid_epoch_path(position)
        atomic_write_bytes(target, data)
        for old, _ in self.mid_epoch_copies():
            if old != target:
                old.unlink(missing_ok=True)
        return Checkpoint(target, position.epochs - 1, hashlib.sha256(data).hexdigest(), position.batches)

    def copies(self) -> list[Path]:
        """Verified end-of-epoch copies, newest first."""
        if not self.directory.exists():
            return []
        found = [p for p in self.directory.iterdir() if _COPY_NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_COPY_NAME.match(p.name).group(1)), reverse=True)  # type: ignore[union-attr]

    def mid_epoch_copies(self) -> list[tuple[Path, Position]]:
        """Mid-epoch checkpoints with the position their name gives, newest first."""
        if not self.directory.exists():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _MID_NAME.match(path.name)
            if match:
                found.append((path, Position(int(match.group(1)), int(match.group(2)))))
        return sorted(found, key=lambda item: item[1], reverse=True)

    def newest_loadable(self) -> Checkpoint | None:
        """The newest checkpoint that loads: ``last.pt``, a verified copy or a mid-epoch one.

        Candidates are tried newest first (a copy wins a tie, since it was
        verified when written); every one that fails to load, or whose content
        is not where its name says, is logged and skipped.
        """
        candidates: list[tuple[Position, int, Path]] = []
        for copy in self.copies():
            number = int(_COPY_NAME.match(copy.name).group(1))  # type: ignore[union-attr]
            candidates.append((Position(number), 1, copy))
        for mid, position in self.mid_epoch_copies():
            candidates.append((position, 1, mid))
        if self.last.exists():
            checkpoint, detail = try_load(self.last)
            if checkpoint is None:
                log.warning("checkpoint %s does not load (%s); ignoring it", self.last, detail)
            elif checkpoint["epoch"] >= 0 and checkpoint.get("optimizer") is not None:
                candidates.append((Position(int(checkpoint["epoch"]) + 1), 0, self.last))
        for position, _, path in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
            checkpoint, detail = try_load(path)
            if checkpoint is None:
                log.warning("checkpoint %s does not load (%s); falling back to an older one", path, detail)
                continue
            held = held_position(checkpoint)
            if held != position:
                log.warning("checkpoint %s holds %s, not %s; skipped", path, held, position)
                continue
            return Checkpoint(path, position.epochs - 1, detail, position.batches)
        return None


def truncate_results(results_csv: Path, epochs_done: int) -> int:
    """Keep only the rows of epochs ``<= epochs_done`` (1-based); return rows dropped.

    ultralytics appends one row per epoch; resuming from an older checkpoint
    would otherwise repeat rows for the epochs trained again.
    """
    if not results_csv.exists():
        return 0
    lines = results_csv.read_text(encoding="utf-8").splitlines()
    if not lines:
        return 0
    header, rows = lines[0], lines[1:]
    kept = []
    for row in rows:
        fields = next(csv.reader([row]), [])
        try:
            epoch = int(float(fields[0]))
        except (ValueError, IndexError):
            continue
        if epoch <= epochs_done:
            kept.append(row)
    dropped = len(rows) - len(kept)
    if dropped:
        atomic_write_bytes(results_csv, ("\n".join([header, *kept]) + "\n").encode())
    return dropped
