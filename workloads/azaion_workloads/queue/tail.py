"""The newest offset in the stream, for ``messagesWaiting`` and stall detection.

RabbitMQ 3.10 has no stream-statistics command (it came in 3.11) and rstream
1.1.1 does not implement one, so the tail is found the way any client can: a
short subscription at ``last`` delivers the newest chunk, whose highest
offset is the tail. One probe costs a subscribe and an unsubscribe on a
connection of its own; it never touches the consuming connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from rstream import Consumer, ConsumerOffsetSpecification, OffsetType

log = logging.getLogger(__name__)

#: How long a probe waits for the newest chunk; an empty stream never sends one.
PROBE_TIMEOUT_SECONDS = 3.0


class TailProbe:
    def __init__(self, stream: str, make_consumer: Callable[[], Consumer]) -> None:
        self.stream = stream
        self._make_consumer = make_consumer
        self._consumer: Consumer | None = None

    async def tail(self) -> int | None:
        """The stream's newest offset; None when empty or unreachable."""
        offsets: list[int] = []
        arrived = asyncio.Event()

        async def on_message(_raw: bytes, context: Any) -> None:
            offsets.append(context.offset)
            arrived.set()

        subscription: int | None = None
        try:
            if self._consumer is None:
                self._consumer = self._make_consumer()
                await asyncio.wait_for(self._consumer.start(), PROBE_TIMEOUT_SECONDS)
            subscription = await asyncio.wait_for(
                self._consumer.subscribe(
                    self.stream,
                    on_message,
                    offset_specification=ConsumerOffsetSpecification(OffsetType.LAST, None),
                    initial_credit=1,
                ),
                PROBE_TIMEOUT_SECONDS,
            )
            # The whole chunk is handed over in one pass, before the waiter resumes.
            await asyncio.wait_for(arrived.wait(), PROBE_TIMEOUT_SECONDS)
            return max(offsets)
        except TimeoutError:
            return max(offsets) if offsets else None
        except Exception as error:
            log.debug("tail probe failed: %s", error.__class__.__name__)
            await self.close()
            return None
        finally:
            if subscription is not None and self._consumer is not None:
                try:
                    await asyncio.wait_for(self._consumer.unsubscribe(subscription), 5)
                except Exception:
                    await self.close()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.close(), 5)
