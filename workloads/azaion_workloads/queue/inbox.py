"""Deliveries between the stream client and the applier: bounded, in stream order.

The client's callback puts each delivery here and returns at once, so the
event loop goes on reading frames while a worker thread applies a whole
batch; a full inbox makes the callback wait, which holds up the client and
with it the broker (memory stays bounded whatever the disk's pace).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

#: Bounds of what waits for the applier: whichever is reached first.
MAX_MESSAGES = 1000
MAX_BYTES = 16 * 2**20


@dataclass(frozen=True, slots=True)
class Delivery:
    generation: int  # the subscription it came from; a newer one makes it stale
    raw: bytes
    offset: int
    timestamp: int | None  # the broker's, in milliseconds


class Inbox:
    def __init__(self, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES) -> None:
        self.max_messages, self.max_bytes = max_messages, max_bytes
        self._items: deque[Delivery] = deque()
        self._bytes = 0
        self.delivered = asyncio.Event()  # set while something waits
        self.drained = asyncio.Event()  # set when there is room again

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        return len(self._items) >= self.max_messages or self._bytes >= self.max_bytes

    def put(self, delivery: Delivery) -> None:
        self._items.append(delivery)
        self._bytes += len(delivery.raw)
        self.delivered.set()

    def take(self, limit: int, max_bytes: int = MAX_BYTES) -> list[Delivery]:
        """Up to ``limit`` deliveries and about ``max_bytes`` (always at least one), oldest first."""
        batch: list[Delivery] = []
        size = 0
        while self._items and len(batch) < limit and (not batch or size + len(self._items[0].raw) <= max_bytes):
            delivery = self._items.popleft()
            batch.append(delivery)
            size += len(delivery.raw)
        self._bytes -= size
        if not self._items:
            self.delivered.clear()
        if not self.full():
            self.drained.set()
        return batch

    def clear(self) -> None:
        """Drop everything (a new subscription delivers it again); wake a waiting callback."""
        self._items.clear()
        self._bytes = 0
        self.delivered.clear()
        self.drained.set()
