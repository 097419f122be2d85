"""The parts of exact resume that need no training: the pin, the shuffle, the mid-epoch store."""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
from pathlib import Path
from typing import Any

import pytest

from azaion_workloads.training.checkpoints import MID_EPOCH_KEY, CheckpointStore, Position
from azaion_workloads.training.train import PositionFile, _redone
from tests.unit.test_training_checkpoints import _checkpoint as _end_of_epoch

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")
resumable = pytest.importorskip("azaion_workloads.training.resumable")

#: The ultralytics code :mod:`resumable` relies on, as the pinned version has it. When a new
#: version changes one of these, re-read it against resumable's docstring (the placeholder
#: slots, the accumulation cadence, the loader's sampler, the checkpoint keys), rerun
#: tests/integration/test_training_resume.py, and update the pin and these digests.
PINNED_SOURCES = {
    "BaseTrainer._do_train": "87a635e3bfc4fd3f",
    "BaseTrainer._setup_train": "aecd0c111afe4314",
    "BaseTrainer._build_train_pipeline": "07afcc0627f2c8b2",
    "BaseTrainer.resume_training": "a43cef5955c0cf67",
    "BaseTrainer._load_checkpoint_state": "1c4472505c34ed5e",
    "BaseTrainer.check_resume": "8cc8f082c77b2878",
    "BaseTrainer.optimizer_step": "bec16cbc552a8f2d",
    "BaseTrainer._close_dataloader_mosaic": "ee5b6df05c4167d6",
    "DetectionTrainer.get_dataloader": "981b10cf054f7a1b",
    "DetectionTrainer.preprocess_batch": "cd3df8d7801c310d",
    "InfiniteDataLoader": "7b232ee7c2d3e888",
    "build_dataloader": "4f01bd7501fe661a",
    "load_checkpoint": "3399d0f461b2f4ff",
}


def _sources() -> dict[str, Any]:
    from ultralytics.data import build
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn import tasks

    owners = {"BaseTrainer": BaseTrainer, "DetectionTrainer": DetectionTrainer}
    found: dict[str, Any] = {}
    for name in PINNED_SOURCES:
        owner, _, attribute = name.partition(".")
        found[name] = getattr(owners[owner], attribute) if attribute else getattr(build, name, None)
        if found[name] is None:
            found[name] = getattr(tasks, name)
    return found


def test_the_installed_ultralytics_is_the_pinned_one() -> None:
    import ultralytics

    assert ultralytics.__version__ == resumable.PINNED_ULTRALYTICS


def test_the_ultralytics_internals_resume_relies_on_are_unchanged() -> None:
    digests = {
        name: hashlib.sha256(inspect.getsource(code).encode()).hexdigest()[:16] for name, code in _sources().items()
    }
    changed = sorted(name for name, digest in digests.items() if digest != PINNED_SOURCES[name])
    assert changed == [], f"ultralytics changed {changed}: see PINNED_SOURCES' comment"


def test_an_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    first = resumable.epoch_order(50, seed=0, epoch=3)
    assert sorted(first) == list(range(50))
    assert resumable.epoch_order(50, seed=0, epoch=3) == first
    assert resumable.epoch_order(50, seed=0, epoch=4) != first
    assert resumable.epoch_order(50, seed=1, epoch=3) != first


def test_the_sampler_passes_epoch_after_epoch_and_skips_the_trained_start_once() -> None:
    sampler = resumable.EpochSampler(20, seed=7)
    sampler.next_epoch, sampler.skip = 2, (2, 6)
    assert list(sampler) == resumable.epoch_order(20, 7, 2)[6:]
    assert list(sampler) == resumable.epoch_order(20, 7, 3)
    assert len(sampler) == 20


def _mid_epoch(epochs: int, batches: int) -> bytes:
    buffer = io.BytesIO()
    state = {"epoch": epochs, "done": batches}
    torch.save({"epoch": epochs - 1, "ema": {"w": torch.zeros(2)}, "optimizer": {}, MID_EPOCH_KEY: state}, buffer)
    return buffer.getvalue()


def test_a_mid_epoch_checkpoint_is_newer_than_its_epoch_start_and_older_than_its_end(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    store.last.write_bytes(_end_of_epoch(1))
    store.keep_verified(store.last, 1)  # 2 epochs done
    kept = store.keep_mid_epoch(_mid_epoch(2, 40))
    assert kept.path.name == "epoch-0002-batch-000040.pt" and kept.position == Position(2, 40)
    assert store.keep_mid_epoch(_mid_epoch(2, 90)).position == Position(2, 90)
    assert [p for _, p in store.mid_epoch_copies()] == [Position(2, 90)]  # the older one is gone
    assert store.newest_loadable().position == Position(2, 90)  # type: ignore[union-attr]

    store.last.write_bytes(_end_of_epoch(2))
    store.keep_verified(store.last, 2)  # epoch 3 ends: its mid-epoch checkpoint is of no more use
    assert store.mid_epoch_copies() == []
    assert store.newest_loadable().position == Position(3, 0)  # type: ignore[union-attr]


def test_a_damaged_or_misnamed_mid_epoch_checkpoint_is_never_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.last.parent.mkdir(parents=True)
    store.last.write_bytes(_end_of_epoch(0))
    store.keep_verified(store.last, 0)
    with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
        store.keep_mid_epoch(_mid_epoch(1, 10)[:80])
    assert store.mid_epoch_copies() == []
    with pytest.raises(ValueError, match="not a mid-epoch checkpoint"):
        store.keep_mid_epoch(_end_of_epoch(0))

    store.mid_epoch_path(Position(1, 30)).write_bytes(_mid_epoch(1, 30)[:100])  # torn by a disk fault
    store.mid_epoch_path(Position(1, 20)).write_bytes(_mid_epoch(1, 5))  # not what its name says
    with caplog.at_level(logging.WARNING):
        chosen = store.newest_loadable()
    assert chosen is not None and chosen.position == Position(1, 0)
    assert "epoch-0001-batch-000030.pt does not load" in caplog.text
    assert "epoch-0001-batch-000020.pt holds" in caplog.text


def test_the_position_file_and_the_work_redone(tmp_path: Path) -> None:
    position = PositionFile(tmp_path / "position.json")
    assert position.read() is None
    position.write(Position(3, 17))
    assert position.read() == Position(3, 17)
    (tmp_path / "position.json").write_text("{torn")
    assert position.read() is None

    assert _redone(Position(3, 17), Position(3, 10), batches_per_epoch=50) == 7
    assert _redone(Position(4, 5), Position(3, 40), batches_per_epoch=50) == 15
    assert _redone(Position(3, 0), Position(3, 0), batches_per_epoch=50) == 0
    assert _redone(None, Position(3, 0), batches_per_epoch=50) is None
    assert _redone(Position(2, 0), Position(3, 0), batches_per_epoch=50) is None  # an older record
