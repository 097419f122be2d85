"""Throughput of the annotation consumer, next to two baselines in the same process.

    .venv/bin/python -m bench.consumer                  # private broker, 10,000 each of 2, 48, 500 KiB
    .venv/bin/python -m bench.consumer --only consumer --backlog 0 --latency-rate 0   # to profile one
    .venv/bin/python -m bench.consumer --messages 2000 --image-kb 48 --rabbitmq 127.0.0.1:5552

Three consumers read the same stream from its first message:

* ceiling:  an rstream subscription whose callback does nothing (the most any
            consumer can get from this broker and client);
* original: every message decoded, applied and made durable on its own, then
            the offset file rewritten in place and fsynced (how the original
            stored offsets: after each message);
* consumer: the real consumer (``StreamConsumer``): the same decoding and
            writes, applied a batch per worker-thread call and group-committed
            (up to 500 messages or 1 s made durable with one syncfs, then its
            offset stored).

Each applies to a fresh data root on the same disk (``--data-dir``, default a
temporary directory). Figures are messages per second and ratios between them,
and how much the process's peak RSS grew during each run. Then a backlog run: ``--backlog`` messages
(100,000 of 48 KiB by default) published before the consumer starts, the time
it takes to catch up and how far its memory grows meanwhile. Last, a latency run:
messages published at a steady ``--latency-rate`` while the consumer runs,
and the time from each message's broker timestamp to its offset being stored
(p50, p99).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rstream import Consumer, ConsumerOffsetSpecification, OffsetType, Producer

from azaion_devtools import wire
from azaion_devtools.broker import LocalRabbitMQ, StreamEndpoint, create_stream, delete_stream, publish
from azaion_workloads.layout import DataLayout
from azaion_workloads.queue.config import load_config
from azaion_workloads.queue.consumer import StreamConsumer
from azaion_workloads.queue.processor import MessageProcessor


def messages(count: int, image_bytes: int, first: int = 0) -> list[wire.WireMessage]:
    """Created annotations with distinct names (from number ``first``); a pool of 64 images keeps setup short."""
    pool = [wire.noisy_jpeg(seed, image_bytes) for seed in range(64)]
    boxes = wire.detections_json([wire.Box(1, 0.5, 0.5, 0.2, 0.2), wire.Box(22, 0.3, 0.7, 0.1, 0.05)])
    return [
        wire.WireMessage(
            wire.encode_annotation(str(uuid.UUID(int=index)), pool[index % len(pool)], boxes, role="Validator"),
            "Created",
        )
        for index in range(first, first + count)
    ]


def _stream_consumer(endpoint: StreamEndpoint) -> Consumer:
    return Consumer(endpoint.host, endpoint.port, username=endpoint.user, password=endpoint.password)


async def _consume(endpoint: StreamEndpoint, stream: str, last: int, handle: Callable[[bytes, int], Any]) -> float:
    """Seconds until ``handle`` has seen offset ``last`` (an rstream subscription from first)."""
    done = asyncio.Event()

    async def on_message(raw: bytes, context: Any) -> None:
        await handle(raw, context.offset)
        if context.offset >= last:
            done.set()

    started = time.perf_counter()
    async with _stream_consumer(endpoint) as consumer:
        await consumer.subscribe(
            stream, on_message, offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None)
        )
        await done.wait()
        return time.perf_counter() - started


async def ceiling(endpoint: StreamEndpoint, stream: str, last: int, _root: Path) -> float:
    async def nothing(_raw: bytes, _offset: int) -> None:
        return None

    return await _consume(endpoint, stream, last, nothing)


async def original(endpoint: StreamEndpoint, stream: str, last: int, root: Path) -> float:
    processor = MessageProcessor(DataLayout(root), stream)
    offset_file = root / "offset.yaml"

    def apply_then_store(raw: bytes, offset: int) -> None:
        processor.process(raw, offset, None)
        processor.sync()  # every message durable on its own, before its offset
        with open(offset_file, "w", encoding="utf-8") as handle:  # in place, as the original did
            handle.write(f"offset: {offset}\n")
            handle.flush()
            os.fsync(handle.fileno())

    async def handle(raw: bytes, offset: int) -> None:
        await asyncio.to_thread(apply_then_store, raw, offset)

    return await _consume(endpoint, stream, last, handle)


def consumer_config(endpoint: StreamEndpoint, stream: str, root: Path, **settings: str) -> Any:
    """The real consumer's configuration, as its environment would give it."""
    return load_config(
        {
            "RABBITMQ_HOST": endpoint.host,
            "RABBITMQ_PORT": str(endpoint.port),
            "RABBITMQ_USER": endpoint.user,
            "RABBITMQ_PASSWORD": endpoint.password,
            "RABBITMQ_STREAM": stream,
            "QUEUE_CONSUMER_NAME": f"bench-{uuid.uuid4().hex[:6]}",
            "QUEUE_OFFSET_FILE": str(root / "state" / "offset.yaml"),
            "AZAION_ROOT_DIR": str(root),
            **settings,
        }
    )


async def consumer(endpoint: StreamEndpoint, stream: str, last: int, root: Path) -> float:
    config = consumer_config(endpoint, stream, root)
    queue = StreamConsumer(config)
    finished: list[float] = []

    async def stop_at_last() -> None:
        while queue.state.processed_offset is None or queue.state.processed_offset < last:
            await asyncio.sleep(0.01)
        finished.append(time.perf_counter())
        queue.request_stop("benchmark done")

    started = time.perf_counter()
    watcher = asyncio.create_task(stop_at_last())
    code = await queue.run()
    await watcher
    assert code == 0, code
    return finished[0] - started


async def latency(endpoint: StreamEndpoint, stream: str, root: Path, rate: float, seconds: float) -> list[float]:
    """Broker timestamp -> offset stored, in seconds, for each message published at a steady ``rate``."""
    config = consumer_config(endpoint, stream, root, QUEUE_START_FROM="next")
    queue = StreamConsumer(config)
    stamps: dict[int, int] = {}  # offset -> broker timestamp (ms)
    delays: list[float] = []
    process, save = queue.processor.process, queue.offsets.save

    def recording_process(raw: bytes, offset: int, stored_at_ms: int | None, *rest: Any) -> Any:
        stamps[offset] = stored_at_ms or 0
        return process(raw, offset, stored_at_ms, *rest)

    def recording_save(snapshot: Any) -> None:
        save(snapshot)
        now_ms = time.time() * 1000
        for offset in [o for o in stamps if o <= snapshot.offset]:
            delays.append((now_ms - stamps.pop(offset)) / 1000)

    queue.processor.process = recording_process  # type: ignore[method-assign]
    queue.offsets.save = recording_save  # type: ignore[method-assign]
    steady = messages(int(rate * seconds), 48 * 1024)

    achieved: list[float] = []

    async def publish_steadily() -> None:
        while not queue.state.connected:
            await asyncio.sleep(0.05)
        # One producer for the whole run: a connection per message could not keep the rate.
        async with Producer(
            endpoint.host, endpoint.port, username=endpoint.user, password=endpoint.password
        ) as producer:
            started = time.perf_counter()
            for index, message in enumerate(steady):
                await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
                await producer.send(stream, message.to_amqp())
            achieved.append(len(steady) / (time.perf_counter() - started))
        await asyncio.sleep(2 * config.settings.commit_interval_ms / 1000 + 1)
        queue.request_stop("benchmark done")

    publisher = asyncio.create_task(publish_steadily())
    assert await queue.run() == 0
    await publisher
    print(f"latency run: {len(steady)} messages published at {achieved[0]:.0f} msg/s")
    return delays


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def peak_rss_growth(run: Any) -> tuple[Any, float]:
    """``run``'s result, and how far this process's resident memory rose above its start meanwhile."""
    start, peak = rss_mib(), [0.0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib() - start)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        return await run, peak[0]
    finally:
        sampler.cancel()


def throughput(
    endpoint: StreamEndpoint, work: Path, count: int, image_kb: int, repeat: int, only: list[str] | None = None
) -> None:
    """The three consumers over one stream of ``count`` Created messages with ``image_kb`` KiB images."""
    stream = f"azaion-bench-{uuid.uuid4().hex[:8]}"
    batch = messages(count, image_kb * 1024)
    size = sum(len(m.body) for m in batch) / len(batch)
    asyncio.run(create_stream(endpoint, stream))
    started = time.perf_counter()
    asyncio.run(publish(endpoint, stream, batch))
    print(f"published {len(batch)} messages of {size / 1024:.0f} KiB in {time.perf_counter() - started:.1f} s")
    last = len(batch) - 1  # nothing else writes to this stream before the runs
    del batch

    rates: dict[str, list[float]] = {"ceiling": [], "original": [], "consumer": []}
    runs = {"ceiling": ceiling, "original": original, "consumer": consumer}
    runs = {name: run for name, run in runs.items() if not only or name in only}
    for attempt in range(repeat):  # interleaved, so a noisy neighbour hits all alike
        for name, run in runs.items():
            root = work / f"{name}-{image_kb}-{attempt}"
            root.mkdir()
            seconds, grown = asyncio.run(peak_rss_growth(run(endpoint, stream, last, root)))
            rates[name].append((last + 1) / seconds)
            print(f"{name:>9}: {rates[name][-1]:8.0f} messages/s  ({seconds:.1f} s; RSS grew at most {grown:.0f} MiB)")
            shutil.rmtree(root, ignore_errors=True)

    best = {name: max(values) for name, values in rates.items() if values}
    if len(best) < 3:  # a partial run (--only) prints its rates alone
        asyncio.run(delete_stream(endpoint, stream))
        return
    if repeat > 1:
        print("best of", repeat, ": " + ", ".join(f"{n} {r:.0f}/s" for n, r in best.items()))
    print(f"consumer / ceiling:  {best['consumer'] / best['ceiling']:.3f}")
    print(f"consumer / original: {best['consumer'] / best['original']:.2f}x")
    print(f"a 100,000-message backlog of these: {100_000 / best['consumer'] / 60:.1f} min for the consumer")
    asyncio.run(delete_stream(endpoint, stream))


def backlog(endpoint: StreamEndpoint, work: Path, count: int, image_kb: int) -> None:
    """The consumer catching up ``count`` messages that wait on the stream: how long, and its memory."""
    stream = f"azaion-bench-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_stream(endpoint, stream))
    for first in range(0, count, 5000):  # in pieces: the whole backlog would not fit in this process
        asyncio.run(publish(endpoint, stream, messages(min(5000, count - first), image_kb * 1024, first)))
    root = work / f"backlog-{image_kb}"
    root.mkdir()
    before = rss_mib()
    seconds, grown = asyncio.run(peak_rss_growth(consumer(endpoint, stream, count - 1, root)))
    print(
        f"backlog of {count:,} messages of {image_kb} KiB: ingested in {seconds:.0f} s "
        f"({count / seconds:.0f} messages/s); process RSS {before:.0f} MiB before, peak growth {grown:.0f} MiB"
    )
    shutil.rmtree(root, ignore_errors=True)
    asyncio.run(delete_stream(endpoint, stream))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--image-kb", type=int, nargs="+", default=[2, 48, 500], help="one run per image size")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages of the backlog run (0: none)")
    parser.add_argument("--backlog-kb", type=int, default=48, help="image size of the backlog run")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="messages/s of the latency run (0: none)")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs of each; the best counts")
    parser.add_argument(
        "--rabbitmq", metavar="HOST:PORT", help="use this broker (guest/guest) instead of a private one"
    )
    parser.add_argument(
        "--only", nargs="+", choices=["ceiling", "original", "consumer"], help="run only these (to profile one)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="where the data roots go (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="azaion-bench-", dir=args.data_dir))
    broker: LocalRabbitMQ | None = None
    try:
        if args.rabbitmq:
            host, _, port = args.rabbitmq.rpartition(":")
            endpoint = StreamEndpoint(host, int(port))
        else:
            broker = LocalRabbitMQ(work / "broker")
            broker.start()
            endpoint = broker.endpoint
        for image_kb in args.image_kb:
            throughput(endpoint, work, args.messages, image_kb, args.repeat, args.only)
        if args.backlog > 0:
            backlog(endpoint, work, args.backlog, args.backlog_kb)
        if args.latency_rate > 0:
            stream = f"azaion-bench-{uuid.uuid4().hex[:8]}"
            asyncio.run(create_stream(endpoint, stream))
            root = work / "latency"
            root.mkdir()
            delays = sorted(asyncio.run(latency(endpoint, stream, root, args.latency_rate, args.latency_seconds)))
            p50, p99 = delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]
            print(
                f"latency at {args.latency_rate:.0f} msg/s, broker timestamp -> offset stored "
                f"({len(delays)} messages): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
            )
            asyncio.run(delete_stream(endpoint, stream))
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
