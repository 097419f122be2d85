"""Disk effects of the message types, and convergence of replays after a crash."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from azaion_devtools import wire
from azaion_workloads.fsutil import leftover_temp_files
from azaion_workloads.layout import DataLayout
from azaion_workloads.queue import apply as apply_module
from azaion_workloads.queue.durability import PendingDirectories
from azaion_workloads.queue.processor import MessageProcessor
from azaion_workloads.queue.recovery import consumer_directories, remove_temporary_files
from azaion_workloads.queue.staging import Listings, StagedTree
from tests.fixtures import scenarios

pytestmark = pytest.mark.unit

STORED_AT_MS = 1_747_000_000_000


def processor(root: Path) -> MessageProcessor:
    return MessageProcessor(DataLayout(root), "azaion-annotations")


def run(
    proc: MessageProcessor,
    steps: Sequence[scenarios.Step],
    start: int = 0,
    stop: int | None = None,
    barriers: list[int] | None = None,
) -> None:
    """Process steps[start:stop]; ``barriers`` collects the indexes that stored the offset first."""
    for index in range(start, len(steps) if stop is None else stop):
        barrier = None if barriers is None else (lambda index=index: barriers.append(index))
        proc.process(steps[index].wire.stored_bytes(), index, STORED_AT_MS, barrier)


def annotation(name: str, role: str, status: str = "Created", image: bytes | None = None) -> wire.WireMessage:
    boxes = [wire.Box(3, 0.5, 0.5, 0.25, 0.125)]
    body = wire.encode_annotation(
        name, b"" if image is None else image, wire.detections_json(boxes), role=role, status=status
    )
    return wire.WireMessage(body, status)


def apply_all(root: Path, messages: Sequence[wire.WireMessage]) -> dict[str, bytes]:
    proc = processor(root)
    for offset, message in enumerate(messages):
        outcome = proc.process(message.stored_bytes(), offset, STORED_AT_MS)
        assert outcome.result == "applied", outcome
    return scenarios.read_tree(root)


LABEL = wire.yolo_label([wire.Box(3, 0.5, 0.5, 0.25, 0.125)])


def test_creator_role_picks_the_directory(tmp_path: Path) -> None:
    image = wire.tiny_image(1)
    # Validators (and admins) write to data/, everyone else to data-seed/.
    seed, data = "data-seed", "data"
    directory = {"Operator": seed, "CompanionPC": seed, "Validator": data, "Admin": data, "ApiAdmin": data}
    tree = apply_all(tmp_path, [annotation(f"by-{role}", role, image=image) for role in directory])
    expected: dict[str, bytes] = {}
    for role, base in directory.items():
        expected[f"{base}/images/by-{role}.jpg"] = image
        expected[f"{base}/labels/by-{role}.txt"] = LABEL
    assert tree == expected
    assert LABEL == b"3 0.5 0.5 0.25 0.125\n"


def test_validation_moves_seed_to_data_and_deletion_keeps_the_files(tmp_path: Path) -> None:
    image = wire.tiny_image(2)
    tree = apply_all(
        tmp_path,
        [
            annotation("a", "Operator", image=image),
            annotation("b", "Operator", image=image),
            wire.WireMessage(wire.encode_bulk(["a", "b"]), "Validated"),
            wire.WireMessage(wire.encode_bulk(["b"]), "Deleted"),
        ],
    )
    assert tree == {
        "data/images/a.jpg": image,
        "data/labels/a.txt": LABEL,
        "data_deleted/images/b.jpg": image,
        "data_deleted/labels/b.txt": LABEL,
    }


def test_an_edit_by_a_validator_brings_the_image_from_seed(tmp_path: Path) -> None:
    image = wire.tiny_image(3)
    edited = wire.WireMessage(
        wire.encode_annotation(
            "a", b"", wire.detections_json([wire.Box(40, 0.1, 0.2, 0.3, 0.4)]), role="Validator", status="Edited"
        ),
        "Edited",
    )
    tree = apply_all(tmp_path, [annotation("a", "Operator", image=image), edited])
    assert tree == {
        "data/images/a.jpg": image,
        "data/labels/a.txt": b"40 0.1 0.2 0.3 0.4\n",
    }


def test_moves_of_missing_files_are_no_ops(tmp_path: Path) -> None:
    image = wire.tiny_image(4)
    tree = apply_all(
        tmp_path,
        [
            wire.WireMessage(wire.encode_bulk(["never-seen"]), "Validated"),
            wire.WireMessage(wire.encode_bulk(["never-seen"]), "Deleted"),
            annotation("a", "Validator", image=image),
            wire.WireMessage(wire.encode_bulk(["a"]), "Validated"),  # already in data
            wire.WireMessage(wire.encode_bulk(["a"]), "Deleted"),
            wire.WireMessage(wire.encode_bulk(["a"]), "Deleted"),  # already deleted
        ],
    )
    assert tree == {"data_deleted/images/a.jpg": image, "data_deleted/labels/a.txt": LABEL}


@pytest.mark.parametrize("seed", range(4))
def test_a_mixed_scenario_leaves_the_expected_tree(tmp_path: Path, seed: int) -> None:
    steps = scenarios.build_scenario(seed, 300)
    run(processor(tmp_path), steps)
    expected = scenarios.expected_outcome(steps)
    assert scenarios.read_tree(tmp_path) == expected.tree
    records = scenarios.quarantine_records(tmp_path)
    assert {offset: record["kind"] for offset, record in records.items()} == expected.quarantined
    assert leftover_temp_files(tmp_path) == []


def test_applying_every_message_twice_changes_nothing(tmp_path: Path) -> None:
    steps = scenarios.build_scenario(11, 200)
    proc = processor(tmp_path)
    for index, step in enumerate(steps):
        proc.process(step.wire.stored_bytes(), index, STORED_AT_MS)
        proc.process(step.wire.stored_bytes(), index, STORED_AT_MS)
    assert scenarios.read_tree(tmp_path) == scenarios.expected_tree(steps)


class SimulatedCrash(BaseException):
    """Raised in the middle of a message, like a kill between two disk operations."""


def crash_after(monkeypatch: pytest.MonkeyPatch, operations: int) -> None:
    """Make the ``operations``-th staged write, move, removal or flushed rename raise SimulatedCrash."""
    remaining = [operations]

    def counting(function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            remaining[0] -= 1
            if remaining[0] < 0:
                raise SimulatedCrash
            return function(*args, **kwargs)

        return wrapper

    for method in ("write", "move", "remove", "_perform"):
        monkeypatch.setattr(StagedTree, method, counting(getattr(StagedTree, method)))


def restart(root: Path) -> MessageProcessor:
    """What the consumer does at start-up: temporary files of the interrupted batch go."""
    remove_temporary_files(consumer_directories(DataLayout(root), root / "state" / "offset.yaml"))
    return processor(root)


@pytest.mark.parametrize("seed", range(40))
def test_replaying_from_any_stored_offset_after_a_crash_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Crash inside message m (after some of its disk operations), then replay from any k <= m
    the consumer could have stored: never before a message that stored the offset first."""
    rng = random.Random(seed)
    steps = scenarios.build_scenario(1000 + seed, 120, malformed_every=9)
    crashed_at = rng.randrange(len(steps))
    barriers: list[int] = []
    run(processor(tmp_path), steps, 0, crashed_at, barriers)
    with monkeypatch.context() as patch:
        crash_after(patch, rng.randint(0, 12))
        with contextlib.suppress(SimulatedCrash):
            run(processor(tmp_path), steps, crashed_at, crashed_at + 1, barriers)
    earliest = max([0, crashed_at - 60, *barriers])
    run(restart(tmp_path), steps, rng.randint(earliest, crashed_at))
    assert scenarios.read_tree(tmp_path) == scenarios.expected_tree(steps)
    assert leftover_temp_files(tmp_path) == []


def test_directory_fsyncs_wait_for_the_commit_and_happen_once_each(tmp_path: Path) -> None:
    proc = processor(tmp_path)
    image = wire.tiny_image(5)
    for offset, message in enumerate(
        [
            annotation("a", "Operator", image=image),
            annotation("b", "Operator", image=image),
            wire.WireMessage(wire.encode_bulk(["a"]), "Validated"),
            wire.WireMessage(b"\xc1", "Created"),
        ]
    ):
        proc.process(message.stored_bytes(), offset, STORED_AT_MS)
    directories = {"data-seed/images", "data-seed/labels", "data/images", "data/labels", "quarantine"}
    assert len(proc.pending) == len(directories)
    assert proc.sync() == len(directories)
    assert len(proc.pending) == 0 and proc.sync() == 0


def edit(
    name: str, role: str = "Validator", boxes: Sequence[wire.Box] = (wire.Box(5, 0.25, 0.25, 0.5, 0.5),)
) -> wire.WireMessage:
    return wire.WireMessage(
        wire.encode_annotation(name, b"", wire.detections_json(boxes), role=role, status="Edited"), "Edited"
    )


def apply_each(root: Path, messages: Sequence[wire.WireMessage]) -> list[str]:
    proc = processor(root)
    outcomes = [proc.process(message.stored_bytes(), offset, STORED_AT_MS) for offset, message in enumerate(messages)]
    return [outcome.result for outcome in outcomes]


def test_an_edit_without_image_of_a_name_never_created_is_quarantined_and_writes_nothing(tmp_path: Path) -> None:
    assert apply_each(tmp_path, [edit("ghost")]) == ["quarantined"]
    tree = scenarios.read_tree(tmp_path)
    assert [path for path in tree if not path.startswith("quarantine/")] == []
    assert scenarios.quarantine_records(tmp_path)[0]["kind"] == "edit-without-image"


def test_every_deleted_copy_is_kept(tmp_path: Path) -> None:
    first, second = wire.tiny_image(10), wire.tiny_image(200)
    messages = [
        annotation("z", "Operator", image=first),
        wire.WireMessage(wire.encode_bulk(["z"]), "Deleted"),
        annotation("z", "Validator", image=second),
        wire.WireMessage(wire.encode_bulk(["z"]), "Deleted"),
        wire.WireMessage(wire.encode_bulk(["z"]), "Deleted"),  # nothing live: a no-op
    ]
    assert apply_each(tmp_path, messages) == ["applied"] * 5
    tree = scenarios.read_tree(tmp_path)
    digest = apply_module.copy_digest({"images/.jpg": second, "labels/.txt": LABEL})[:16]
    assert tree == {
        "data_deleted/images/z.jpg": first,
        "data_deleted/labels/z.txt": LABEL,
        f"data_deleted/images/z~{digest}.jpg": second,
        f"data_deleted/labels/z~{digest}.txt": LABEL,
    }
    # The whole stream again, from its first message: the same tree.
    apply_each(tmp_path, messages)
    assert scenarios.read_tree(tmp_path) == tree


def test_an_edit_of_a_deleted_annotation_is_quarantined_and_an_image_revives_it(tmp_path: Path) -> None:
    image, revived = wire.tiny_image(12), wire.tiny_image(150)
    messages = [
        annotation("z", "Operator", image=image),
        wire.WireMessage(wire.encode_bulk(["z"]), "Deleted"),
        edit("z"),
        annotation("z", "Validator", status="Edited", image=revived),
    ]
    assert apply_each(tmp_path, messages) == ["applied", "applied", "quarantined", "applied"]
    tree = scenarios.read_tree(tmp_path)
    assert scenarios.quarantine_records(tmp_path)[2]["kind"] == "edit-of-deleted"
    assert tree == {
        "data_deleted/images/z.jpg": image,
        "data_deleted/labels/z.txt": LABEL,  # untouched by the refused edit
        "quarantine/00000000000000000002.msg": messages[2].stored_bytes(),
        "data/images/z.jpg": revived,
        "data/labels/z.txt": LABEL,
    }
    apply_each(tmp_path, messages)
    assert scenarios.read_tree(tmp_path) == tree


def test_labels_keep_every_digit_of_the_message(tmp_path: Path) -> None:
    from azaion_workloads.training.dataset import validate_label_text

    boxes = [wire.Box(1, 0.123456789012345, 0.5, 4e-7, 0.1), wire.Box(2, 0.0, 1.0, 1.0, 0.30000001192092896)]
    body = wire.encode_annotation("fine", wire.tiny_image(14), wire.detections_json(boxes), role="Validator")
    assert apply_each(tmp_path, [wire.WireMessage(body, "Created")]) == ["applied"]
    text = (tmp_path / "data/labels/fine.txt").read_text()
    parsed = [[float(field) for field in line.split()[1:]] for line in text.splitlines()]
    assert parsed == [[b.x, b.y, b.w, b.h] for b in boxes]
    assert "4e-07" in text and validate_label_text(text, frozenset({1, 2})) is None


@pytest.mark.parametrize("seed", range(6))
def test_replaying_the_whole_stream_over_its_own_result_changes_nothing(tmp_path: Path, seed: int) -> None:
    steps = scenarios.build_scenario(500 + seed, 250, malformed_every=11)
    assert {"edit-of-deleted", "edit-without-image"} <= set(scenarios.expected_outcome(steps).quarantined.values())
    run(processor(tmp_path), steps)
    run(processor(tmp_path), steps)
    assert scenarios.read_tree(tmp_path) == scenarios.expected_tree(steps)
    assert any("~" in path for path in scenarios.expected_tree(steps)), "the scenario deletes a revived name"


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("consumer_mode", [False, True], ids=["fsync", "syncfs-listings"])
def test_a_crash_inside_a_group_commit_replays_from_the_last_stored_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, consumer_mode: bool
) -> None:
    """Batches of messages made durable together (as the consumer does: with ``consumer_mode``, one
    syncfs per barrier and directory listings instead of stats); a crash while a batch is staged or
    while it is flushed, then a replay from the offset stored last, converges."""
    rng = random.Random(seed)
    steps = scenarios.build_scenario(2000 + seed, 150, malformed_every=13)
    every = rng.choice([3, 10, 40])
    proc = MessageProcessor(
        DataLayout(tmp_path),
        "azaion-annotations",
        group_commit=True,
        durability="syncfs" if consumer_mode else "fsync",
        sole_writer=consumer_mode,
    )
    stored = [-1]  # the offset the consumer would have stored

    def commit(upto: int) -> None:
        proc.sync()
        stored[0] = upto

    def process(index: int) -> None:
        proc.process(steps[index].wire.stored_bytes(), index, STORED_AT_MS, lambda: commit(index - 1))

    crashed_at = rng.randrange(len(steps))
    for index in range(crashed_at):
        process(index)
        if (index + 1) % every == 0:
            commit(index)
    staged = len(proc.tree)
    with monkeypatch.context() as patch:
        crash_after(patch, rng.randint(0, 8 + 2 * staged))  # while staging, or inside the flush
        with contextlib.suppress(SimulatedCrash):
            process(crashed_at)
            commit(crashed_at)
    run(restart(tmp_path), steps, stored[0] + 1)
    assert scenarios.read_tree(tmp_path) == scenarios.expected_tree(steps)
    assert leftover_temp_files(tmp_path) == []


def test_listings_follow_the_batch_and_are_read_again_after_a_failed_flush(tmp_path: Path) -> None:
    """A sole writer's lookups come from one listing per directory, kept by its own flushes."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "before.jpg").write_bytes(b"old")
    tree = StagedTree(PendingDirectories("syncfs"), listings=Listings())
    assert tree.exists(images / "before.jpg") and not tree.exists(images / "new.jpg")
    tree.write(images / "new.jpg", b"new")
    assert tree.remove(images / "before.jpg")
    tree.flush()
    tree.pending.sync()
    assert tree.exists(images / "new.jpg") and not tree.exists(images / "before.jpg")
    assert sorted(p.name for p in images.iterdir()) == ["new.jpg"]

    (images / "added-behind-its-back.jpg").write_bytes(b"x")
    assert not tree.exists(images / "added-behind-its-back.jpg")  # what sole_writer promises away
    (images / "new.jpg").unlink()  # removed behind its back: the rename below fails...
    assert tree.move(images / "new.jpg", images / "moved.jpg")
    with pytest.raises(FileNotFoundError):
        tree.flush()
    fresh = StagedTree(PendingDirectories("syncfs"), listings=tree.listings)
    assert fresh.exists(images / "added-behind-its-back.jpg")  # ...and the listings are read again
    assert not fresh.exists(images / "new.jpg")
