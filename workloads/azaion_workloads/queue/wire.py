"""The annotation platform's wire format, decoded into validated models.

A stream entry is an AMQP 1.0 message. Its ``AnnotationStatus`` application
property says which body follows (the enum's name or its number: both are
accepted). The body is a MessagePack positional array written by the .NET
service, optionally gzip-compressed (a body that starts with ``1f 8b``).

Anything that cannot be decoded or fails validation raises
:class:`MalformedMessage` with a short reason; the reason never contains the
message's bytes (an image must not end up in a log line).
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import json
import math
import zlib
from collections.abc import Collection
from typing import Any

import msgpack
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

from azaion_contract import IMAGE_EXTENSIONS
from azaion_workloads.layout import UnsafePathError, safe_name

#: The largest body accepted after decompression (a gzip bomb stops here).
MAX_BODY_BYTES = 64 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
STATUS_PROPERTY = "AnnotationStatus"

#: Pillow format names accepted as images. The extension is not required to
#: match the content: training reads images by content, and refusing a PNG
#: named .jpg would lose a good annotation.
IMAGE_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"})
DEFAULT_EXTENSION = ".jpg"


class AnnotationStatus(enum.IntEnum):
    CREATED = 10
    EDITED = 20
    VALIDATED = 30
    DELETED = 40

    @property
    def label(self) -> str:
        return self.name.lower()


class Role(enum.IntEnum):
    OPERATOR = 10
    VALIDATOR = 20
    COMPANION_PC = 30
    ADMIN = 40
    API_ADMIN = 1000

    @property
    def is_validator(self) -> bool:
        return self in (Role.VALIDATOR, Role.ADMIN, Role.API_ADMIN)


class Source(enum.IntEnum):
    AI = 0
    MANUAL = 1


class MalformedMessage(ValueError):
    """A message that cannot be applied; ``kind`` is a short stable category."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail
        #: The message type, when it was known before decoding failed.
        self.status: AnnotationStatus | None = None
        super().__init__(f"{kind}: {detail}")


def _enum_member(enum_cls: type[enum.IntEnum], value: Any) -> enum.IntEnum:
    """An enum from its number or (case- and separator-insensitive) name."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool):
        raise ValueError(f"not a {enum_cls.__name__}")
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            wanted = text.replace("_", "").lower()
            for member in enum_cls:
                if member.name.replace("_", "").lower() == wanted:
                    return member
            raise ValueError(f"unknown {enum_cls.__name__} {text[:40]!r}")
    if isinstance(value, int):
        try:
            return enum_cls(value)
        except ValueError:
            raise ValueError(f"unknown {enum_cls.__name__} {value}") from None
    raise ValueError(f"{enum_cls.__name__} of type {type(value).__name__}")


#: Every accepted spelling of each detection key, written lower-case without
#: separators: a key matches when it equals one of these after the same
#: folding (PascalCase, camelCase, snake_case, kebab-case, all-lower or
#: all-upper .NET names alike).
DETECTION_KEYS: dict[str, tuple[str, ...]] = {
    "class_id": ("classnumber", "classid", "class", "cls"),
    "x": ("x", "centerx", "centrex", "cx"),
    "y": ("y", "centery", "centrey", "cy"),
    "w": ("width", "w"),
    "h": ("height", "h"),
    "confidence": ("confidence", "probability"),
}
_FIELD_OF_KEY = {spelling: name for name, spellings in DETECTION_KEYS.items() for spelling in spellings}


def fold_key(key: str) -> str:
    """``ClassNumber``, ``class_number``, ``CLASS-NUMBER`` -> ``classnumber``."""
    return "".join(character for character in key.lower() if character not in "_- ")


def _coordinate_text(value: float) -> str:
    # The shortest text that parses back to the same double (Python's repr),
    # so a label holds exactly the message's numbers; +0.0 turns -0.0 into 0.0.
    return repr(value + 0.0)


class Detection(BaseModel):
    """One box: class id, centre and size normalised to the image (0..1)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    class_id: int
    x: float
    y: float
    w: float
    h: float
    confidence: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, value: Any) -> Any:
        """Map each key, whatever its case and separators, onto its field."""
        if not isinstance(value, dict):
            return value
        fields: dict[str, Any] = {}
        for key, item in value.items():
            name = _FIELD_OF_KEY.get(fold_key(key)) if isinstance(key, str) else None
            if name is None:
                continue  # unknown keys are ignored, as before
            if name in fields and fields[name] != item:
                raise ValueError(f"{name} is given twice with different values")
            fields[name] = item
        return fields

    @field_validator("class_id", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("class id must be an integer")
        return value

    @field_validator("x", "y")
    @classmethod
    def _centre(cls, value: float) -> float:
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError("centre coordinates must lie in 0..1")
        return value

    @field_validator("w", "h")
    @classmethod
    def _size(cls, value: float) -> float:
        if not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise ValueError("width and height must lie in (0, 1]")
        return value

    def yolo_line(self) -> str:
        """``class_id cx cy w h``, as the YOLO label format wants it, at full precision."""
        numbers = " ".join(_coordinate_text(value) for value in (self.x, self.y, self.w, self.h))
        return f"{self.class_id} {numbers}"


def label_text(detections: list[Detection]) -> str:
    return "".join(detection.yolo_line() + "\n" for detection in detections)


class AnnotationMessage(BaseModel):
    """A Created or Edited annotation (body items 0..10)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    status: AnnotationStatus
    name: str
    image_extension: str
    detections: list[Detection]
    image: bytes | None
    created_role: Role
    created_date: dt.datetime | None = None
    original_media_name: str | None = None
    time_ticks: int | None = None
    created_email: str | None = None
    source: Source | None = None

    @property
    def by_validator(self) -> bool:
        return self.created_role.is_validator

    @property
    def image_file(self) -> str:
        return self.name + self.image_extension


class BulkMessage(BaseModel):
    """A Validated or Deleted message: the names it applies to."""

    model_config = ConfigDict(frozen=True)

    status: AnnotationStatus
    names: list[str]


Message = AnnotationMessage | BulkMessage


# --------------------------------------------------------------------------
# Decoding steps


def _amqp(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    """The body and the application properties of one AMQP 1.0 message."""
    from rstream import amqp_decoder

    try:
        message = amqp_decoder(raw)
    except Exception:  # the decoder raises anything from IndexError to TypeError
        raise MalformedMessage("amqp", "not an AMQP 1.0 message") from None
    body: Any = message.body
    if body is None:
        body = getattr(message, "value", None)
    if isinstance(body, list) and all(isinstance(part, bytes | bytearray) for part in body):
        body = b"".join(body)
    if isinstance(body, bytearray | memoryview):
        body = bytes(body)
    if not isinstance(body, bytes) or not body:
        raise MalformedMessage("amqp", "no binary body")
    properties: dict[str, Any] = {}
    for key, value in (message.application_properties or {}).items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        properties[name] = value
    return body, properties


def _status(properties: dict[str, Any]) -> AnnotationStatus | None:
    value = properties.get(STATUS_PROPERTY)
    if value is None:
        wanted = STATUS_PROPERTY.lower()
        value = next((v for k, v in properties.items() if k.lower() == wanted), None)
    if value is None:
        return None
    try:
        return AnnotationStatus(_enum_member(AnnotationStatus, value))
    except ValueError as error:
        raise MalformedMessage("status", f"{STATUS_PROPERTY} property: {error}") from None


def _gunzip(body: bytes) -> bytes:
    if not body.startswith(GZIP_MAGIC):
        return body
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise MalformedMessage("gzip", "corrupt gzip body") from None
    if len(data) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise MalformedMessage("gzip", f"body larger than {MAX_BODY_BYTES} bytes uncompressed")
    if not inflater.eof:
        raise MalformedMessage("gzip", "truncated gzip body")
    return data


def _unpack(body: bytes) -> list[Any]:
    try:
        # timestamp=0 keeps msgpack Timestamps: a date outside datetime's range
        # must not make an otherwise good message unreadable.
        value = msgpack.unpackb(body, raw=False, timestamp=0, strict_map_key=False)
    except Exception:  # ExtraData, FormatError, StackError, UnicodeDecodeError...
        raise MalformedMessage("msgpack", "not a MessagePack document") from None
    if not isinstance(value, list):
        raise MalformedMessage("msgpack", f"body is a {type(value).__name__}, not an array")
    return value


def _datetime(value: Any) -> dt.datetime | None:
    try:
        if isinstance(value, msgpack.Timestamp):
            return value.to_datetime()
        if isinstance(value, dt.datetime):
            return value
        if isinstance(value, str):
            return dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _name(value: Any) -> str:
    try:
        return safe_name(value)
    except UnsafePathError:
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise MalformedMessage("name", f"unsafe or invalid annotation name {shown!r}") from None


def _extension(value: Any) -> str:
    if value is None or value == "":
        return DEFAULT_EXTENSION
    if not isinstance(value, str):
        raise MalformedMessage("extension", f"image extension of type {type(value).__name__}")
    extension = value.strip().lower()
    if not extension.startswith("."):
        extension = "." + extension
    if extension not in IMAGE_EXTENSIONS:
        raise MalformedMessage("extension", f"unsupported image extension {value[:20]!r}")
    return extension


def _detections(value: Any, valid_ids: Collection[int]) -> list[Detection]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise MalformedMessage("detections", "detections are not valid JSON") from None
    if not isinstance(value, list):
        raise MalformedMessage("detections", "detections are not a list")
    detections: list[Detection] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedMessage("detections", f"detection {index} is not an object")
        try:
            detection = Detection.model_validate(item)
        except ValidationError as error:
            first = error.errors(include_input=False, include_url=False)[0]
            where = "".join(f"{part}: " for part in first["loc"])
            raise MalformedMessage("detections", f"detection {index}: {where}{first['msg']}") from None
        if detection.class_id not in valid_ids:
            raise MalformedMessage("detections", f"detection {index}: unknown class id {detection.class_id}")
        detections.append(detection)
    return detections


def _image(value: Any, required: bool) -> bytes | None:
    if value is None or value == b"":
        if required:
            raise MalformedMessage("image", "no image bytes")
        return None
    if not isinstance(value, bytes):
        raise MalformedMessage("image", f"image of type {type(value).__name__}, not bytes")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(value)) as picture:
            found = picture.format or "unknown"
            picture.verify()  # structure check without decoding every pixel
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise MalformedMessage("image", "image bytes are not a readable image") from None
    except Exception:  # Pillow plugins raise a wide range of errors on bad input
        raise MalformedMessage("image", "image bytes are not a readable image") from None
    if found not in IMAGE_FORMATS:
        raise MalformedMessage("image", f"unsupported image format {found}")
    return value


def _annotation(status: AnnotationStatus, items: list[Any], valid_ids: Collection[int]) -> AnnotationMessage:
    if len(items) < 8:
        raise MalformedMessage("schema", f"annotation array has {len(items)} items, needs 8 or more")
    extension = _extension(items[4])
    try:
        role = Role(_enum_member(Role, items[7]))
    except ValueError as error:
        raise MalformedMessage("role", str(error)) from None
    source: Source | None = None
    if len(items) > 9 and items[9] is not None:
        try:
            source = Source(_enum_member(Source, items[9]))
        except ValueError:
            source = None  # informational only: an unknown source does not stop the message
    ticks = items[3] if isinstance(items[3], int) and not isinstance(items[3], bool) else None
    return AnnotationMessage(
        status=status,
        name=_name(items[1]),
        image_extension=extension,
        detections=_detections(items[5], valid_ids),
        image=_image(items[6], required=status is AnnotationStatus.CREATED),
        created_role=role,
        created_date=_datetime(items[0]),
        original_media_name=_optional_str(items[2]),
        time_ticks=ticks,
        created_email=_optional_str(items[8]) if len(items) > 8 else None,
        source=source,
    )


def _bulk(status: AnnotationStatus, items: list[Any]) -> BulkMessage:
    if not items or not isinstance(items[0], list):
        raise MalformedMessage("schema", "item 0 of a bulk message must be the list of names")
    names = [_name(name) for name in items[0]]
    return BulkMessage(status=status, names=list(dict.fromkeys(names)))


def decode(raw: bytes, valid_ids: Collection[int]) -> Message:
    """Decode one stream entry; raise :class:`MalformedMessage` when it cannot be applied."""
    body, properties = _amqp(raw)
    status = _status(properties)
    try:
        items = _unpack(_gunzip(body))
    except MalformedMessage as error:
        error.status = status
        raise
    if status is None:
        # Without the property only an annotation body says what it is (item 10).
        embedded = items[10] if len(items) > 10 else None
        try:
            status = AnnotationStatus(_enum_member(AnnotationStatus, embedded))
        except ValueError:
            raise MalformedMessage("status", f"no {STATUS_PROPERTY} property") from None
        if status not in (AnnotationStatus.CREATED, AnnotationStatus.EDITED):
            raise MalformedMessage("status", f"no {STATUS_PROPERTY} property")
    try:
        if status in (AnnotationStatus.CREATED, AnnotationStatus.EDITED):
            return _annotation(status, items, valid_ids)
        return _bulk(status, items)
    except MalformedMessage as error:
        error.status = status
        raise


def status_property(raw: bytes) -> str | None:
    """The raw AnnotationStatus property, for quarantine records (None when unreadable)."""
    try:
        _, properties = _amqp(raw)
    except MalformedMessage:
        return None
    value = properties.get(STATUS_PROPERTY)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)[:40]
