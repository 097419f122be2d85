"""Mid-epoch checkpoints and exact resume, through the real ``azaion-train`` entrypoint on CPU.

An epoch of more than 200 batches (tiny images, batch 2, ``workers=0`` and
ultralytics' deterministic mode), interrupted at a random batch: by SIGTERM
(the pod's stop) and by SIGKILL (a crash, an OOM kill, a lost node).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

import azaion_contract as contract
from azaion_devtools.processes import ManagedProcess, wait_until
from azaion_devtools.synthetic import write_annotations
from azaion_workloads.training.checkpoints import CheckpointStore, Position
from azaion_workloads.training.train import POSITION_FILE, PositionFile
from tests.integration.test_training_run import IMGSZ, Run

pytestmark = pytest.mark.integration

#: 460 images at 0.9/0.05/0.05 give 414 training images: 207 batches of 2 per epoch.
IMAGES, BATCHES = 460, 207
SETTINGS = {
    "TRAINING_EPOCHS": "2",
    "TRAINING_BATCH_SIZE": "2",
    "DATASET_SPLIT": "0.9,0.05,0.05",
    "EXPORT_ONNX": "false",
}


def _run(tmp: Path, name: str, **extra: str) -> Run:
    (tmp / name).mkdir()
    run = Run(tmp / name, name, **{**SETTINGS, **extra})
    write_annotations(run.root / "data", IMAGES, size=IMGSZ)
    return run


def _position(run: Run) -> Position | None:
    return PositionFile(run.run_dir / POSITION_FILE).read()


def _wait_for_batches(run: Run, process: ManagedProcess, at_least: Position) -> None:
    wait_until(
        lambda: (_position(run) or Position(-1)) >= at_least or not process.alive(),
        timeout=300,
        what=f"training to reach {at_least}",
        interval=0.05,
    )
    assert process.alive(), process.log_tail()


def _final_weights(run: Run) -> dict[str, object]:
    import torch

    checkpoint = torch.load(run.run_dir / "weights" / "last.pt", map_location="cpu", weights_only=False)
    return (checkpoint.get("ema") or checkpoint["model"]).state_dict()  # stripped: the EMA is "model"


def _results_rows(run: Run) -> list[list[str]]:
    """results.csv without its wall-time column (the one figure that may differ)."""
    lines = (run.run_dir / "results.csv").read_text().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    keep = [i for i, h in enumerate(header) if h != "time"]
    return [[row.split(",")[i].strip() for i in keep] for row in lines[1:]]


def test_sigterm_mid_epoch_resumes_at_that_batch_and_ends_bitwise_equal(tmp_path: Path) -> None:
    import torch

    straight = _run(tmp_path, "straight")
    code, log = straight.run("run.log", timeout=600)
    assert code == 0, log[-3000:]

    interrupted = _run(tmp_path, "interrupted")
    stop_at = random.Random().randrange(20, BATCHES - 20)
    first = interrupted.start("run-1.log")
    try:
        _wait_for_batches(interrupted, first, Position(0, stop_at))
        sent = time.monotonic()
        os.killpg(first.proc.pid, signal.SIGTERM)
        code = first.proc.wait(timeout=120)
        stopped_in = time.monotonic() - sent
    finally:
        first.stop()
    log = (interrupted.tmp / "run-1.log").read_text()
    assert code == contract.EXIT_INTERRUPTED, log[-3000:]
    assert stopped_in < 30, f"took {stopped_in:.1f}s to stop (the grace period is 300s by default)"
    checkpoint = interrupted.status()["lastCheckpoint"]
    assert checkpoint["epoch"] == 0 and stop_at <= checkpoint["batch"] < BATCHES, checkpoint
    saved = CheckpointStore(interrupted.run_dir).mid_epoch_copies()
    assert [position for _, position in saved] == [Position(0, checkpoint["batch"])]
    # Nothing trained after the checkpoint: a SIGTERM costs no work.
    assert _position(interrupted) == Position(0, checkpoint["batch"])

    code, log = interrupted.run("run-2.log", timeout=600)
    assert code == 0, log[-3000:]
    assert f"resuming at batch {checkpoint['batch']} of {BATCHES} of epoch 1" in log, log[-3000:]
    resumed = interrupted.status()["progress"]["resumedFrom"]
    assert resumed == {"epoch": 0, "batch": checkpoint["batch"], "redoneBatches": 0}

    # The same computation as without the interruption, to the bit.
    expected, actual = _final_weights(straight), _final_weights(interrupted)
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert _results_rows(interrupted) == _results_rows(straight)
    assert interrupted.network_attempts() == ""


def test_sigkill_loses_at_most_the_checkpoint_interval(tmp_path: Path) -> None:
    interval_seconds = 2.0
    run = _run(tmp_path, "killed", TRAINING_EPOCHS="1", TRAINING_CHECKPOINT_INTERVAL_MINUTES=str(interval_seconds / 60))
    # A random batch late enough for a checkpoint at any speed (at 22 batches/s, 100 batches
    # are 4.5 s), early enough that the epoch has not ended.
    kill_at = random.Random().randrange(100, BATCHES - 10)
    first = run.start("run-1.log")
    trained: list[tuple[float, Position]] = []  # when the test saw each position
    try:
        _wait_for_batches(run, first, Position(0, 1))
        while first.alive():
            position = _position(run)
            if position is not None and (not trained or position != trained[-1][1]):
                trained.append((time.monotonic(), position))
            if position is not None and position.batches >= kill_at:
                break
            time.sleep(0.01)
        assert first.alive(), first.log_tail()
        first.kill()
        killed = time.monotonic()
    finally:
        first.stop()
    reached = _position(run)
    assert reached is not None and reached.epochs == 0 and reached.batches < BATCHES, reached
    log = (run.tmp / "run-1.log").read_text()
    assert "mid-epoch checkpoint" in log, log[-3000:]

    code, log = run.run("run-2.log", timeout=600)
    assert code == 0, log[-3000:]
    resumed = run.status()["progress"]["resumedFrom"]
    assert resumed["epoch"] == 0 and 0 < resumed["batch"] <= reached.batches
    assert resumed["redoneBatches"] == reached.batches - resumed["batch"]
    # The work lost is what was trained after the resume point: find when the test saw it trained.
    trained_at = next(at for at, position in trained if position.batches >= resumed["batch"])
    lost_seconds = killed - trained_at
    # Slack: the test's polling, the save itself, and the batches until the next optimizer step
    # (a checkpoint is taken only right after one: up to nbs/batch = 32 batches late in principle,
    # about 10 in this epoch's warmup).
    assert lost_seconds <= interval_seconds + 2.5, (
        f"lost {lost_seconds:.1f}s ({resumed['redoneBatches']} batches) with a {interval_seconds}s interval"
    )
    assert run.network_attempts() == ""
