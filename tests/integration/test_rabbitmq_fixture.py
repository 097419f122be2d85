"""The private broker and the test producer: what goes in comes out, byte for byte."""

from __future__ import annotations

import asyncio
import gzip

import msgpack
import pytest

from azaion_devtools.broker import consume_raw, publish
from azaion_devtools.wire import WireMessage, encode_annotation, encode_bulk, tiny_image
from tests.fixtures.rabbitmq import RabbitMQ

pytestmark = pytest.mark.integration


def test_publish_and_consume_round_trip(rabbitmq: RabbitMQ, stream_name: str) -> None:
    image = tiny_image(1)
    sent = [
        WireMessage(encode_annotation("a", image, "[]"), "Created"),
        WireMessage(encode_annotation("b", image, "[]", status="Edited"), 20, gzip_body=True),
        WireMessage(encode_bulk(["a", "b"]), "Validated", sub_entry_gzip=True),
        WireMessage(encode_bulk(["a"]), 40),
        WireMessage(b"", None, raw=b"not an AMQP message"),
    ]
    asyncio.run(publish(rabbitmq.endpoint, stream_name, sent))
    received = asyncio.run(consume_raw(rabbitmq.endpoint, stream_name, len(sent)))

    assert [offset for offset, _ in received] == [0, 1, 2, 3, 4]
    first = received[0][1]
    assert first.application_properties == {b"AnnotationStatus": b"Created"}
    items = msgpack.unpackb(first.body, timestamp=3)
    assert items[1] == "a" and items[6] == image and items[10] == 10
    second = received[1][1]
    assert second.application_properties == {b"AnnotationStatus": 20}
    assert second.body[:2] == b"\x1f\x8b"
    assert msgpack.unpackb(gzip.decompress(second.body))[1] == "b"
    # The sub-entry batch arrives decompressed by the client, like any other entry.
    assert msgpack.unpackb(received[2][1].body)[0] == ["a", "b"]
    assert received[3][1].application_properties == {b"AnnotationStatus": 40}
    assert received[4][1] == b"not an AMQP message"


def test_the_broker_can_be_restarted_and_keeps_its_streams(rabbitmq: RabbitMQ, stream_name: str) -> None:
    if not rabbitmq.can_restart:
        pytest.skip("external broker")
    asyncio.run(publish(rabbitmq.endpoint, stream_name, [WireMessage(encode_bulk(["x"]), "Deleted")]))
    rabbitmq.restart()
    received = asyncio.run(consume_raw(rabbitmq.endpoint, stream_name, 1))
    assert msgpack.unpackb(received[0][1].body)[0] == ["x"]
