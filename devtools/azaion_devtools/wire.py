"""A producer of the annotation platform's wire format, written from its description.

Messages are encoded the way the .NET annotation service does (MessagePack
positional arrays, the ``AnnotationStatus`` application property, optional
gzip of the body), so the consumer is tested and benchmarked against the real
format rather than against its own encoder.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

# --------------------------------------------------------------------------
# The original producer's wire format (docs: original-system.md)

STATUS_NUMBERS = {"Created": 10, "Edited": 20, "Validated": 30, "Deleted": 40}
ROLE_NUMBERS = {"Operator": 10, "Validator": 20, "CompanionPC": 30, "Admin": 40, "ApiAdmin": 1000}
SOURCE_NUMBERS = {"AI": 0, "Manual": 1}
TICKS_PER_SECOND = 10_000_000  # a .NET TimeSpan is a count of 100 ns ticks


@dataclass(frozen=True)
class Box:
    class_id: int
    x: float
    y: float
    w: float
    h: float
    confidence: float | None = None


#: Detection key spellings a .NET producer (or a hand-written one) may use.
SPELLINGS: dict[str, tuple[str, str, str, str, str, str]] = {
    "pascal": ("ClassNumber", "X", "Y", "Width", "Height", "Confidence"),
    "camel": ("classNumber", "x", "y", "width", "height", "confidence"),
    "lower": ("classnumber", "centerx", "centery", "width", "height", "confidence"),
    "upper": ("CLASSNUMBER", "CENTERX", "CENTERY", "WIDTH", "HEIGHT", "PROBABILITY"),
    "snake": ("class_number", "center_x", "center_y", "width", "height", "confidence"),
    "kebab": ("class-id", "center-x", "center-y", "w", "h", "probability"),
}


def detections_json(boxes: Sequence[Box], pascal_case: bool = True, spelling: str | None = None) -> str:
    """The detections field: a JSON string, in one of the key spellings."""
    keys = SPELLINGS[spelling or ("pascal" if pascal_case else "camel")]
    items = []
    for box in boxes:
        item: dict[str, Any] = dict(zip(keys[:5], (box.class_id, box.x, box.y, box.w, box.h), strict=True))
        if box.confidence is not None:
            item[keys[5]] = box.confidence
        items.append(item)
    return json.dumps(items)


def encode_annotation(
    name: str,
    image: bytes,
    detections: str,
    role: str | int = "Operator",
    status: str = "Created",
    extension: str = ".jpg",
    created: dt.datetime | None = None,
    email: str | None = "operator@example.com",
    source: str = "Manual",
    media: str | None = "flight-0001.mp4",
    time_ticks: int = 83 * TICKS_PER_SECOND,
) -> bytes:
    """A Created/Edited body: the 11-item positional MessagePack array."""
    created = created or dt.datetime(2025, 5, 17, 9, 30, tzinfo=dt.UTC)
    role_number = ROLE_NUMBERS[role] if isinstance(role, str) else role
    body = [
        created,  # packed as the MessagePack timestamp extension (-1)
        name,
        media,
        time_ticks,
        extension,
        detections,
        image,
        role_number,
        email,
        SOURCE_NUMBERS[source],
        STATUS_NUMBERS[status],
    ]
    return msgpack.packb(body, datetime=True, use_bin_type=True)


def encode_bulk(names: Sequence[str], user: str = "validator@example.com") -> bytes:
    """A Validated/Deleted body: item 0 is the list of annotation names."""
    when = dt.datetime(2025, 5, 18, 12, 0, tzinfo=dt.UTC)
    return msgpack.packb([list(names), user, when], datetime=True, use_bin_type=True)


@dataclass(frozen=True)
class WireMessage:
    """One stream message: a body plus the AnnotationStatus property.

    ``raw`` publishes bytes that are not an AMQP message at all (a foreign
    producer); ``sub_entry_gzip`` uses the stream protocol's own compression.
    """

    body: bytes
    status: str | int | None
    gzip_body: bool = False
    sub_entry_gzip: bool = False
    properties: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None

    def payload(self) -> bytes:
        return gzip.compress(self.body, mtime=0) if self.gzip_body else self.body

    def to_amqp(self) -> Any:
        if self.raw is not None:
            return self.raw
        from rstream import AMQPMessage

        properties = dict(self.properties)
        if self.status is not None:
            properties["AnnotationStatus"] = self.status
        return AMQPMessage(body=self.payload(), application_properties=properties or None)

    def stored_bytes(self) -> bytes:
        """The entry as the broker stores it (what a quarantine record keeps)."""
        message = self.to_amqp()
        return message if isinstance(message, bytes) else bytes(message)


def tiny_image(seed: int, fmt: str = "JPEG", size: int = 8) -> bytes:
    """A small, real image whose bytes differ per seed."""
    import io

    from PIL import Image

    picture = Image.new("RGB", (size, size), (seed % 251, (seed // 251) % 251, 77))
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def noisy_jpeg(seed: int, approx_bytes: int = 50_000) -> bytes:
    """A JPEG of roughly ``approx_bytes`` (random pixels do not compress)."""
    import io
    import random as _random

    from PIL import Image

    side = max(16, int((approx_bytes / 0.82) ** 0.5))  # random pixels: ~0.82 bytes each at q85
    pixels = _random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def yolo_label(boxes: Sequence[Box]) -> bytes:
    """The label file the consumer must write (YOLO: ``class cx cy w h``), numbers exact.

    ``repr`` is the shortest text that parses back to the same double, so
    reading the label gives back the message's numbers.
    """
    return "".join(f"{b.class_id} {b.x!r} {b.y!r} {b.w!r} {b.h!r}\n" for b in boxes).encode()
