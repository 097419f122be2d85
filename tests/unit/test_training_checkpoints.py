"""Choosing the checkpoint to resume from, and keeping results.csv one row per epoch."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from azaion_workloads.training.checkpoints import CheckpointStore, truncate_results

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")


def _checkpoint(epoch: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "ema": {"w": torch.zeros(2)}, "optimizer": {"state": {}}}, buffer)
    return buffer.getvalue()


def test_verified_copy_is_kept_and_old_ones_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    for epoch in range(5):
        store.last.write_bytes(_checkpoint(epoch))
        kept = store.keep_verified(store.last, epoch)
        assert kept.path == tmp_path / "checkpoints" / f"epoch-{epoch + 1:04d}.pt"
        assert kept.path.read_bytes() == store.last.read_bytes()
    assert [p.name for p in store.copies()] == ["epoch-0005.pt", "epoch-0004.pt", "epoch-0003.pt"]


def test_a_damaged_save_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    store.last.write_bytes(_checkpoint(3)[:100])
    with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
        store.keep_verified(store.last, 3)
    assert store.copies() == []


def test_newest_loadable_falls_back_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    for epoch in range(3):
        store.last.write_bytes(_checkpoint(epoch))
        store.keep_verified(store.last, epoch)
    assert store.newest_loadable().epoch == 2  # type: ignore[union-attr]

    store.copy_path(3).write_bytes(b"garbage")
    store.last.write_bytes(_checkpoint(2)[:50])
    with caplog.at_level(logging.WARNING):
        chosen = store.newest_loadable()
    assert chosen is not None and chosen.path == store.copy_path(2) and chosen.epoch == 1
    assert "epoch-0003.pt does not load" in caplog.text and "falling back" in caplog.text


def test_last_pt_newer_than_any_copy_wins(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    store.last.write_bytes(_checkpoint(0))
    store.keep_verified(store.last, 0)
    store.last.write_bytes(_checkpoint(1))  # killed before the copy was made
    chosen = store.newest_loadable()
    assert chosen is not None and chosen.path == store.last and chosen.epochs_done == 2


def test_nothing_to_resume(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path).newest_loadable() is None


def test_results_rows_after_the_resume_point_are_dropped(tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,time,loss\n1,1,0.5\n2,2,0.4\n3,3,0.3\n")
    assert truncate_results(csv, 1) == 2
    assert csv.read_text() == "epoch,time,loss\n1,1,0.5\n"
    assert truncate_results(csv, 1) == 0
    assert truncate_results(tmp_path / "missing.csv", 1) == 0
