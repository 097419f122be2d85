"""The cases the original's description leaves open, through the real broker and the
``azaion-queue`` entrypoint: edits with nothing to attach to, names deleted more
than once, edits of deleted annotations, label precision and key spellings; then
the whole stream replayed from its first message over its own result."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from azaion_devtools import wire
from azaion_devtools.broker import consume_raw, publish
from azaion_workloads.fsutil import leftover_temp_files
from azaion_workloads.queue.apply import copy_digest
from tests.fixtures.queue_process import QueueProcess
from tests.fixtures.rabbitmq import RabbitMQ
from tests.fixtures.scenarios import Step, expected_outcome, quarantine_records, read_tree

pytestmark = pytest.mark.integration

BOX = wire.Box(5, 0.25, 0.75, 0.5, 0.125)
TINY = wire.Box(7, 0.123456789012345, 0.5, 4e-7, 0.30000001192092896, 0.87)


def annotation(
    status: str,
    name: str,
    image: bytes | None,
    role: str,
    boxes: tuple[wire.Box, ...] = (BOX,),
    spelling: str = "pascal",
) -> Step:
    detections = wire.detections_json(boxes, spelling=spelling)
    body = wire.encode_annotation(name, image or b"", detections, role=role, status=status)
    return Step(
        wire.WireMessage(body, status),
        status.lower(),
        name=name,
        validator=role != "Operator",
        image=image,
        label=wire.yolo_label(boxes),
    )


def created(name: str, image: bytes, role: str = "Operator", **details: object) -> Step:
    return annotation("Created", name, image, role, **details)  # type: ignore[arg-type]


def edited(name: str, role: str = "Validator", image: bytes | None = None) -> Step:
    return annotation("Edited", name, image, role)


def deleted(*names: str) -> Step:
    return Step(wire.WireMessage(wire.encode_bulk(names), "Deleted"), "deleted", names=names)


def test_the_open_cases_apply_as_documented_and_a_full_replay_converges(
    rabbitmq: RabbitMQ, stream_name: str, tmp_path: Path
) -> None:
    first, second, third, revived = (wire.tiny_image(seed) for seed in (20, 120, 220, 60))
    steps = [
        edited("ghost"),  # 0: never created: quarantined, no lone label
        created("z", first),  # 1
        deleted("z"),  # 2
        created("z", second, role="Validator"),  # 3: created again after its deletion
        deleted("z"),  # 4: a second deleted copy, the first one kept
        edited("z"),  # 5: an edit of a deleted annotation: quarantined
        edited("z", image=revived),  # 6: an edit with its image brings it back
        deleted("z"),  # 7: a third deleted copy
        created("precise", third, role="Validator", boxes=(TINY,)),  # 8
        *(
            created(f"spelled-{spelling}", third, boxes=(BOX, TINY), spelling=spelling)  # 9..14
            for spelling in sorted(wire.SPELLINGS)
        ),
    ]
    asyncio.run(publish(rabbitmq.endpoint, stream_name, [step.wire for step in steps]))
    offsets = [offset for offset, _ in asyncio.run(consume_raw(rabbitmq.endpoint, stream_name, len(steps)))]
    root = tmp_path / "root"

    def consume(name: str) -> QueueProcess:
        queue = QueueProcess(
            rabbitmq.endpoint, stream_name, root, tmp_path / "state", tmp_path / f"{name}.log", QUEUE_CONSUMER_NAME=name
        ).start()
        queue.wait_ready()
        queue.wait_for_offset(offsets[-1])
        assert queue.terminate() == 0, queue.log_tail()
        return queue

    consume("first-pass")
    tree = read_tree(root)
    expected = expected_outcome(steps, offsets)
    assert tree == expected.tree

    # Nothing refused left a label without its image.
    for base in ("data", "data-seed"):
        for label in (root / base / "labels").iterdir():
            assert list((root / base / "images").glob(label.stem + ".*")), label
    assert not (root / "data" / "labels" / "ghost.txt").exists()
    records = quarantine_records(root)
    assert {offset: record["kind"] for offset, record in records.items()} == {
        offsets[0]: "edit-without-image",
        offsets[5]: "edit-of-deleted",
    }
    assert records[offsets[5]]["reason"].startswith("edit-of-deleted: ")

    # Every deleted copy of z is kept: the first under its own name, the later ones under name~digest.
    label = wire.yolo_label([BOX])
    copies = {
        "z": first,
        f"z~{copy_digest({'images/.jpg': second, 'labels/.txt': label})[:16]}": second,
        f"z~{copy_digest({'images/.jpg': revived, 'labels/.txt': label})[:16]}": revived,
    }
    assert {p: b for p, b in tree.items() if p.startswith("data_deleted/")} == {
        **{f"data_deleted/images/{stem}.jpg": image for stem, image in copies.items()},
        **{f"data_deleted/labels/{stem}.txt": label for stem in copies},
    }
    assert not any(path.startswith(("data/", "data-seed/")) and "/z" in path for path in tree)

    # Labels hold the message's numbers exactly (a 6-decimal label would make TINY zero-wide).
    assert tree["data/labels/precise.txt"] == b"7 0.123456789012345 0.5 4e-07 0.30000001192092896\n"
    # Every key spelling was applied, none quarantined (the records above are the only two).
    for spelling in wire.SPELLINGS:
        assert tree[f"data-seed/labels/spelled-{spelling}.txt"] == wire.yolo_label([BOX, TINY]), spelling

    # The whole stream again, from its first message, over its own result: the same tree.
    shutil.rmtree(tmp_path / "state")
    replay = consume("replay")
    assert [line["from"] for line in replay.log_lines() if line.get("message") == "subscribed"] == ["first"]
    assert read_tree(root) == tree
    assert leftover_temp_files(tmp_path) == []
    assert sorted(p.name for p in root.iterdir()) == ["data", "data-seed", "data_deleted", "quarantine"]
