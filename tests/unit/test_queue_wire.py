"""Decoding the .NET producer's messages, and refusing everything else with a reason."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import msgpack
import pytest
from rstream import AMQPMessage

from azaion_devtools import wire
from azaion_workloads.classes import ClassCatalog
from azaion_workloads.queue.wire import (
    DETECTION_KEYS,
    MAX_BODY_BYTES,
    AnnotationMessage,
    AnnotationStatus,
    BulkMessage,
    MalformedMessage,
    Role,
    Source,
    decode,
    fold_key,
    status_property,
)
from tests.fixtures.scenarios import malformed_steps

pytestmark = pytest.mark.unit

VALID_IDS = ClassCatalog.default().valid_ids()
IMAGE = wire.tiny_image(7)
BOXES = [wire.Box(3, 0.5, 0.25, 0.1, 0.2, 0.87), wire.Box(56, 0.9, 0.9, 0.05, 0.05)]


def raw(message: wire.WireMessage) -> bytes:
    return message.stored_bytes()


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("status", ["Created", 10, "10", "created", b"Created"])
def test_a_created_annotation_decodes_field_by_field(gzipped: bool, status: object) -> None:
    body = wire.encode_annotation(
        "0b7f3c2e-1c5d-4c1e-9d7a-2f0d6e9a1b11",
        IMAGE,
        wire.detections_json(BOXES),
        role="Validator",
        extension="jpg",
        created=dt.datetime(2025, 5, 17, 9, 30, 15, tzinfo=dt.UTC),
        email="v@example.com",
        source="AI",
        media="flight.mp4",
        time_ticks=12_345_678,
    )
    message = decode(raw(wire.WireMessage(body, status, gzip_body=gzipped)), VALID_IDS)  # type: ignore[arg-type]
    assert isinstance(message, AnnotationMessage)
    assert message.status is AnnotationStatus.CREATED
    assert message.name == "0b7f3c2e-1c5d-4c1e-9d7a-2f0d6e9a1b11"
    assert message.image_extension == ".jpg"
    assert message.image == IMAGE
    assert message.created_role is Role.VALIDATOR and message.by_validator
    assert message.created_date == dt.datetime(2025, 5, 17, 9, 30, 15, tzinfo=dt.UTC)
    assert message.original_media_name == "flight.mp4"
    assert message.time_ticks == 12_345_678
    assert message.created_email == "v@example.com"
    assert message.source is Source.AI
    assert [d.yolo_line() for d in message.detections] == [
        "3 0.5 0.25 0.1 0.2",
        "56 0.9 0.9 0.05 0.05",
    ]
    assert message.detections[0].confidence == pytest.approx(0.87)


@pytest.mark.parametrize("spelling", sorted(wire.SPELLINGS))
def test_detection_keys_match_whatever_their_case_and_separators(spelling: str) -> None:
    body = wire.encode_annotation("a", IMAGE, wire.detections_json(BOXES, spelling=spelling))
    message = decode(raw(wire.WireMessage(body, "Created")), VALID_IDS)
    assert isinstance(message, AnnotationMessage)
    assert [(d.class_id, d.x, d.y, d.w, d.h, d.confidence) for d in message.detections] == [
        (b.class_id, b.x, b.y, b.w, b.h, b.confidence) for b in BOXES
    ]


def test_one_list_of_names_per_key() -> None:
    folded = {name: {fold_key(spelling) for spelling in spellings} for name, spellings in DETECTION_KEYS.items()}
    # Every spelling the test producer uses folds onto a listed name of its field.
    for keys in wire.SPELLINGS.values():
        for key, field in zip(keys, ("class_id", "x", "y", "w", "h", "confidence"), strict=True):
            assert fold_key(key) in folded[field], key
    assert fold_key("Center_X") == fold_key("CENTER-X") == fold_key("centerX") == "centerx"


def test_the_same_field_twice_with_different_values_is_refused() -> None:
    box = {"ClassNumber": 3, "X": 0.5, "center_x": 0.6, "Y": 0.5, "Width": 0.1, "Height": 0.1}
    with pytest.raises(MalformedMessage) as caught:
        decode(raw(wire.WireMessage(wire.encode_annotation("a", IMAGE, json.dumps([box])), "Created")), VALID_IDS)
    assert caught.value.kind == "detections" and "x is given twice" in str(caught.value)


def test_an_edit_may_come_without_image_bytes() -> None:
    body = wire.encode_annotation("a", b"", "[]", status="Edited", role="Operator")
    message = decode(raw(wire.WireMessage(body, 20)), VALID_IDS)
    assert isinstance(message, AnnotationMessage)
    assert message.status is AnnotationStatus.EDITED
    assert message.image is None and message.detections == []
    assert not message.by_validator


@pytest.mark.parametrize("status", ["Validated", 30, "Deleted", 40])
def test_bulk_messages_carry_names(status: object) -> None:
    message = decode(raw(wire.WireMessage(wire.encode_bulk(["a", "b", "a"]), status)), VALID_IDS)  # type: ignore[arg-type]
    assert isinstance(message, BulkMessage)
    assert message.names == ["a", "b"]
    assert message.status.label in ("validated", "deleted")


def test_without_the_property_an_annotation_body_names_its_own_status() -> None:
    body = wire.encode_annotation("a", IMAGE, "[]", status="Edited")
    message = decode(raw(wire.WireMessage(body, None)), VALID_IDS)
    assert message.status is AnnotationStatus.EDITED


def test_a_stream_client_that_sends_the_body_as_several_data_sections() -> None:
    body = wire.encode_bulk(["a"])
    message = AMQPMessage(body=body, application_properties={"AnnotationStatus": "Deleted"})
    decoded = decode(bytes(message), VALID_IDS)
    assert isinstance(decoded, BulkMessage) and decoded.names == ["a"]


@pytest.mark.parametrize("step", malformed_steps(__import__("random").Random(3), 3), ids=lambda s: s.reason)
def test_every_kind_of_bad_input_is_refused_with_its_reason(step: object) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode(step.wire.stored_bytes(), VALID_IDS)  # type: ignore[attr-defined]
    assert caught.value.kind == step.reason  # type: ignore[attr-defined]


def test_reasons_never_carry_image_bytes() -> None:
    secret = b"\xff\xd8\xff" + b"SECRET-PIXELS" * 10
    body = wire.encode_annotation("a", secret, "[]")
    with pytest.raises(MalformedMessage) as caught:
        decode(raw(wire.WireMessage(body, "Created")), VALID_IDS)
    assert "SECRET" not in str(caught.value)
    wrong = msgpack.packb([None, secret, None, 0, ".jpg", "[]", secret, 10], use_bin_type=True)
    with pytest.raises(MalformedMessage) as caught:
        decode(raw(wire.WireMessage(wrong, "Created")), VALID_IDS)
    assert "SECRET" not in str(caught.value)


def test_a_gzip_bomb_stops_at_the_size_limit() -> None:
    bomb = gzip.compress(b"\x00" * (MAX_BODY_BYTES + 1024))
    message = AMQPMessage(body=bomb, application_properties={"AnnotationStatus": "Deleted"})
    with pytest.raises(MalformedMessage) as caught:
        decode(bytes(message), VALID_IDS)
    assert caught.value.kind == "gzip"


@pytest.mark.parametrize(
    "box, problem",
    [
        ({"ClassNumber": 3, "X": -0.1, "Y": 0.5, "Width": 0.1, "Height": 0.1}, "0..1"),
        ({"ClassNumber": 3, "X": 0.5, "Y": 0.5, "Width": 0, "Height": 0.1}, "(0, 1]"),
        ({"ClassNumber": 3.5, "X": 0.5, "Y": 0.5, "Width": 0.1, "Height": 0.1}, "integer"),
        ({"ClassNumber": 20, "X": "NaN", "Y": 0.5, "Width": 0.1, "Height": 0.1}, "0..1"),
        ({"X": 0.5, "Y": 0.5, "Width": 0.1, "Height": 0.1}, "Field required"),
        ({"ClassNumber": 37, "X": 0.5, "Y": 0.5, "Width": 0.1, "Height": 0.1}, "unknown class id 37"),
    ],
)
def test_bad_boxes_are_refused(box: dict[str, object], problem: str) -> None:
    body = wire.encode_annotation("a", IMAGE, json.dumps([box]))
    with pytest.raises(MalformedMessage) as caught:
        decode(raw(wire.WireMessage(body, "Created")), VALID_IDS)
    assert caught.value.kind == "detections"
    assert problem in str(caught.value)


def test_class_ids_follow_the_catalogue() -> None:
    body = wire.encode_annotation("a", IMAGE, wire.detections_json([wire.Box(17, 0.5, 0.5, 0.1, 0.1)]))
    custom = ClassCatalog.model_validate({"classes": [{"Id": i, "Name": f"c{i}"} for i in range(18)]})
    message = decode(raw(wire.WireMessage(body, "Created")), custom.valid_ids())
    assert isinstance(message, AnnotationMessage) and message.detections[0].class_id == 17


def test_status_property_for_records() -> None:
    assert status_property(raw(wire.WireMessage(wire.encode_bulk(["a"]), 30))) == "30"
    assert status_property(raw(wire.WireMessage(wire.encode_bulk(["a"]), "Deleted"))) == "Deleted"
    assert status_property(b"not amqp") is None
