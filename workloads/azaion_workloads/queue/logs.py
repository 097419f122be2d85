"""JSON log lines on stderr, one object per line.

Extra fields passed with ``extra=`` become keys of the object. Message bodies
are never logged; the stream client's debug output (which dumps frames, image
bytes included) is held at WARNING whatever the configured level.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from azaion_contract.timefmt import rfc3339

# Attributes every LogRecord has; anything else came in through ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": rfc3339(dt.datetime.fromtimestamp(record.created, dt.UTC), milliseconds=True),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, default=_fallback, ensure_ascii=False)


def _fallback(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"  # never the bytes themselves
    return str(value)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("rstream").setLevel(logging.WARNING)
