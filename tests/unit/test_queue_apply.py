"""Disk effects of the message types, and convergence of replays after a crash."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from azaion_workloads.fsutil import leftover_temp_files
from azaion_workloads.layout import DataLayout
from azaion_workloads.queue import apply as apply_module
from azaion_workloads.queue.processor import MessageProcessor
from tests.fixtures.rabbitmq import (
    Box,
    Step,
    WireMessage,
    build_scenario,
    detections_json,
    encode_annotation,
    encode_bulk,
    expected_tree,
    quarantine_records,
    read_tree,
    tiny_image,
    yolo_label,
)

pytestmark = pytest.mark.unit

STORED_AT_MS = 1_747_000_000_000


def processor(root: Path) -> MessageProcessor:
    return MessageProcessor(DataLayout(root), "azaion-annotations")


def run(proc: MessageProcessor, steps: Sequence[Step], start: int = 0, stop: int | None = None) -> None:
    for index in range(start, len(steps) if stop is None else stop):
        proc.process(steps[index].wire.stored_bytes(), index, STORED_AT_MS)


def annotation(name: str, role: str, status: str = "Created", image: bytes | None = None) -> WireMessage:
    boxes = [Box(3, 0.5, 0.5, 0.25, 0.125)]
    body = encode_annotation(name, b"" if image is None else image, detections_json(boxes), role=role, status=status)
    return WireMessage(body, status)


def apply_all(root: Path, messages: Sequence[WireMessage]) -> dict[str, bytes]:
    proc = processor(root)
    for offset, message in enumerate(messages):
        outcome = proc.process(message.stored_bytes(), offset, STORED_AT_MS)
        assert outcome.result == "applied", outcome
    return read_tree(root)


LABEL = yolo_label([Box(3, 0.5, 0.5, 0.25, 0.125)])


def test_creator_role_picks_the_directory(tmp_path: Path) -> None:
    image = tiny_image(1)
    tree = apply_all(
        tmp_path,
        [
            annotation("by-operator", "Operator", image=image),
            annotation("by-validator", "Validator", image=image),
            annotation("by-admin", "Admin", image=image),
            annotation("by-api-admin", "ApiAdmin", image=image),
            annotation("by-companion", "CompanionPC", image=image),
        ],
    )
    assert tree == {
        "data-seed/images/by-operator.jpg": image,
        "data-seed/labels/by-operator.txt": LABEL,
        "data/images/by-validator.jpg": image,
        "data/labels/by-validator.txt": LABEL,
        "data/images/by-admin.jpg": image,
        "data/labels/by-admin.txt": LABEL,
        "data/images/by-api-admin.jpg": image,
        "data/labels/by-api-admin.txt": LABEL,
        "data-seed/images/by-companion.jpg": image,
        "data-seed/labels/by-companion.txt": LABEL,
    }
    assert LABEL == b"3 0.500000 0.500000 0.250000 0.125000\n"


def test_validation_moves_seed_to_data_and_deletion_keeps_the_files(tmp_path: Path) -> None:
    image = tiny_image(2)
    tree = apply_all(
        tmp_path,
        [
            annotation("a", "Operator", image=image),
            annotation("b", "Operator", image=image),
            WireMessage(encode_bulk(["a", "b"]), "Validated"),
            WireMessage(encode_bulk(["b"]), "Deleted"),
        ],
    )
    assert tree == {
        "data/images/a.jpg": image,
        "data/labels/a.txt": LABEL,
        "data_deleted/images/b.jpg": image,
        "data_deleted/labels/b.txt": LABEL,
    }


def test_an_edit_by_a_validator_brings_the_image_from_seed(tmp_path: Path) -> None:
    image = tiny_image(3)
    edited = WireMessage(
        encode_annotation("a", b"", detections_json([Box(40, 0.1, 0.2, 0.3, 0.4)]), role="Validator", status="Edited"),
        "Edited",
    )
    tree = apply_all(tmp_path, [annotation("a", "Operator", image=image), edited])
    assert tree == {
        "data/images/a.jpg": image,
        "data/labels/a.txt": b"40 0.100000 0.200000 0.300000 0.400000\n",
    }


def test_moves_of_missing_files_are_no_ops(tmp_path: Path) -> None:
    image = tiny_image(4)
    tree = apply_all(
        tmp_path,
        [
            WireMessage(encode_bulk(["never-seen"]), "Validated"),
            WireMessage(encode_bulk(["never-seen"]), "Deleted"),
            annotation("a", "Validator", image=image),
            WireMessage(encode_bulk(["a"]), "Validated"),  # already in data
            WireMessage(encode_bulk(["a"]), "Deleted"),
            WireMessage(encode_bulk(["a"]), "Deleted"),  # already deleted
        ],
    )
    assert tree == {"data_deleted/images/a.jpg": image, "data_deleted/labels/a.txt": LABEL}


@pytest.mark.parametrize("seed", range(4))
def test_a_mixed_scenario_leaves_the_expected_tree(tmp_path: Path, seed: int) -> None:
    steps = build_scenario(seed, 300)
    run(processor(tmp_path), steps)
    assert read_tree(tmp_path) == expected_tree(steps)
    records = quarantine_records(tmp_path)
    malformed = {index: step.reason for index, step in enumerate(steps) if step.op == "malformed"}
    assert {offset: record["kind"] for offset, record in records.items()} == malformed
    assert leftover_temp_files(tmp_path) == []


def test_applying_every_message_twice_changes_nothing(tmp_path: Path) -> None:
    steps = build_scenario(11, 200)
    proc = processor(tmp_path)
    for index, step in enumerate(steps):
        proc.process(step.wire.stored_bytes(), index, STORED_AT_MS)
        proc.process(step.wire.stored_bytes(), index, STORED_AT_MS)
    assert read_tree(tmp_path) == expected_tree(steps)


class SimulatedCrash(BaseException):
    """Raised in the middle of a message, like a kill between two disk operations."""


def crash_after(monkeypatch: pytest.MonkeyPatch, operations: int) -> None:
    """Make the ``operations``-th disk write, move or removal raise SimulatedCrash."""
    remaining = [operations]

    def counting(function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            remaining[0] -= 1
            if remaining[0] < 0:
                raise SimulatedCrash
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(apply_module, "atomic_write_bytes", counting(apply_module.atomic_write_bytes))
    monkeypatch.setattr(apply_module, "durable_move", counting(apply_module.durable_move))
    monkeypatch.setattr(apply_module.Applier, "_remove", counting(apply_module.Applier._remove))


@pytest.mark.parametrize("seed", range(40))
def test_replaying_from_any_stored_offset_after_a_crash_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Crash inside message m (after some of its disk operations), then replay from k <= m."""
    rng = random.Random(seed)
    steps = build_scenario(1000 + seed, 120, malformed_every=9)
    crashed_at = rng.randrange(len(steps))
    resume_at = rng.randint(max(0, crashed_at - 60), crashed_at)
    run(processor(tmp_path), steps, 0, crashed_at)
    with monkeypatch.context() as patch:
        crash_after(patch, rng.randint(0, 5))
        with contextlib.suppress(SimulatedCrash):
            run(processor(tmp_path), steps, crashed_at, crashed_at + 1)
    run(processor(tmp_path), steps, resume_at)
    assert read_tree(tmp_path) == expected_tree(steps)


def test_directory_fsyncs_wait_for_the_commit_and_happen_once_each(tmp_path: Path) -> None:
    proc = processor(tmp_path)
    image = tiny_image(5)
    for offset, message in enumerate(
        [
            annotation("a", "Operator", image=image),
            annotation("b", "Operator", image=image),
            WireMessage(encode_bulk(["a"]), "Validated"),
            WireMessage(b"\xc1", "Created"),
        ]
    ):
        proc.process(message.stored_bytes(), offset, STORED_AT_MS)
    directories = {"data-seed/images", "data-seed/labels", "data/images", "data/labels", "quarantine"}
    assert len(proc.pending) == len(directories)
    assert proc.sync() == len(directories)
    assert len(proc.pending) == 0 and proc.sync() == 0
