"""The bounded inbox between the stream client and the applier."""

from __future__ import annotations

import asyncio

from azaion_workloads.queue.inbox import Delivery, Inbox


def _delivery(offset: int, size: int = 10, generation: int = 1) -> Delivery:
    return Delivery(generation, b"x" * size, offset, 1000 + offset)


def test_full_by_messages_or_bytes_whichever_first() -> None:
    by_count = Inbox(max_messages=3, max_bytes=10_000)
    for offset in range(3):
        assert not by_count.full()
        by_count.put(_delivery(offset))
    assert by_count.full()

    by_bytes = Inbox(max_messages=100, max_bytes=25)
    by_bytes.put(_delivery(0))
    by_bytes.put(_delivery(1))
    assert not by_bytes.full() and by_bytes.bytes == 20
    by_bytes.put(_delivery(2))
    assert by_bytes.full()


def test_take_keeps_stream_order_and_signals_room() -> None:
    inbox = Inbox(max_messages=4, max_bytes=10_000)
    for offset in range(4):
        inbox.put(_delivery(offset))
    inbox.drained.clear()
    assert inbox.delivered.is_set()
    assert [d.offset for d in inbox.take(3)] == [0, 1, 2]
    assert inbox.drained.is_set() and inbox.delivered.is_set()  # one still waits
    assert [d.offset for d in inbox.take(3)] == [3]
    assert not inbox.delivered.is_set() and len(inbox) == 0 and inbox.bytes == 0
    assert inbox.take(3) == []


def test_a_batch_is_bounded_by_bytes_too_but_never_empty() -> None:
    inbox = Inbox(max_messages=100, max_bytes=10_000)
    for offset in range(5):
        inbox.put(_delivery(offset, size=300))
    assert [d.offset for d in inbox.take(100, max_bytes=700)] == [0, 1]
    assert [d.offset for d in inbox.take(100, max_bytes=100)] == [2]  # one larger than the bound still goes
    assert inbox.bytes == 600


def test_clear_drops_everything_and_wakes_a_waiting_producer() -> None:
    async def scenario() -> list[str]:
        inbox = Inbox(max_messages=1, max_bytes=10_000)
        inbox.put(_delivery(0))
        events: list[str] = []

        async def producer() -> None:
            while inbox.full():
                inbox.drained.clear()
                await inbox.drained.wait()
            events.append("woken")

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.01)
        assert events == []  # held while the inbox is full
        inbox.clear()
        await asyncio.wait_for(task, 1)
        events.append(f"left {len(inbox)}")
        return events

    assert asyncio.run(scenario()) == ["woken", "left 0"]
