"""The consuming loop: subscribe, apply each message durably, store offsets, reconnect.

Ordering guarantees, and why:

* A message's effects are durable (files fsynced before their renames, the
  directories fsynced, batched, right before the offset) before its offset is
  stored; the offset file is written before the server-side mirror. A crash at
  any point therefore replays, never skips.
* The client's callback only puts each delivery in a bounded inbox; a worker
  thread applies them a batch at a time (one thread hand-off per batch, not
  per message) and stores the offset whenever the commit policy says so. A
  full inbox holds the callback, and with it the client and the broker.
* rstream swallows exceptions raised in a message callback and treats the
  message as delivered, so the callback catches everything itself. A failing
  disk stops the consumer (exit code 1, restarted by Kubernetes) instead of
  letting the stream move past a message that was not applied.
* rstream's own recovery resubscribes from an in-memory position and gives up
  silently after a few attempts; this loop owns reconnection instead: it
  rebuilds the client with exponential backoff, forever, resuming right after
  the last durable offset, and reports not ready meanwhile.
* SIGTERM lets the message in hand finish, stores the offset and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
import signal
import ssl
import time
from typing import Any

from rstream import (
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetNotFound,
    OffsetType,
)
from rstream.exceptions import (
    AccessRefused,
    AuthenticationFailure,
    SASLAuthenticationFailureLoopback,
    VirtualHostAccessFailure,
)
from rstream.recovery import BackOffRecoveryStrategy

import azaion_contract as contract
from azaion_workloads.queue.config import Config
from azaion_workloads.queue.disk import DiskGuard
from azaion_workloads.queue.health import HealthServer
from azaion_workloads.queue.inbox import Delivery, Inbox
from azaion_workloads.queue.metrics import QueueMetrics
from azaion_workloads.queue.offsets import CommitPolicy, OffsetFile, OffsetState
from azaion_workloads.queue.periodic import PeriodicTasks, refresh_disk
from azaion_workloads.queue.processor import BarrierFailed, MessageProcessor, Outcome
from azaion_workloads.queue.recovery import recover
from azaion_workloads.queue.state import ConsumerState
from azaion_workloads.queue.tail import TailProbe
from azaion_workloads.status import StatusReporter

log = logging.getLogger(__name__)

#: Exit code when the environment (not a message) failed: Kubernetes restarts
#: the pod and the consumer resumes from its stored offset.
EXIT_RETRYABLE = 1
#: Seconds allowed for connecting, subscribing and querying an offset.
CONNECT_TIMEOUT = 15.0
#: Heartbeat asked of the broker; a dead peer is noticed within about twice this.
HEARTBEAT_SECONDS = 20
#: Credentials refused this many times in a row: exit EXIT_PERMANENT. Credentials
#: come from a Secret through the environment, so only a restart picks up new ones.
CREDENTIAL_FAILURES_TO_EXIT = 3
#: Deliveries applied per worker-thread call at most (a stop waits for one message, not a batch).
APPLY_BATCH = 500
#: Chunks the broker may send ahead. rstream queues every chunk it receives
#: and grants a new credit as it starts on one, so what waits in memory is
#: about this many chunks (a producer's batch each: 200 messages of 500 KiB
#: are 100 MB) on top of the inbox; the inbox's bound holds the rest back.
SUBSCRIPTION_CREDIT = 2
_CREDENTIAL_ERRORS = (
    AuthenticationFailure,
    SASLAuthenticationFailureLoopback,
    VirtualHostAccessFailure,
    AccessRefused,
)


class Backoff:
    """Exponential delays with jitter, so a fleet of restarts does not stampede."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.attempt = 0


def ssl_context(config: Config) -> ssl.SSLContext | None:
    settings = config.settings
    if not settings.tls:
        return None
    cafile = str(settings.tls_ca_file) if settings.tls_ca_file else None
    return ssl.create_default_context(cafile=cafile)


class StreamConsumer:
    def __init__(self, config: Config, reporter: StatusReporter | None = None) -> None:
        self.config = config
        self.settings = settings = config.settings
        self.layout = config.layout
        self.state = ConsumerState()
        self.metrics = QueueMetrics(self.state)
        self.processor = MessageProcessor(
            self.layout, settings.stream, group_commit=True, durability=settings.durability, sole_writer=True
        )
        self.offsets = OffsetFile(settings.offset_file)
        self.commits = CommitPolicy(settings.commit_every, settings.commit_interval_ms / 1000)
        self.disk = DiskGuard(self.layout.root, settings.disk_warn_percent, settings.disk_critical_percent)
        self.reporter = reporter
        self.exit_code = contract.EXIT_OK
        self._ssl = ssl_context(config)
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()  # held while a message is in hand or the offset is written
        self._generation = 0  # bumps on every (re)subscription; stale callbacks do nothing
        self._attempt = 0
        self._lost = asyncio.Event()
        self._consumer: Consumer | None = None
        self._subscribed_at = 0.0
        self._mirror_event = asyncio.Event()
        self._mirrored: int | None = None  # last offset stored on the server
        self.periodic = PeriodicTasks(
            self.state,
            self.disk,
            reporter,
            settings.status_interval_seconds,
            subscribed_at=lambda: self._subscribed_at,
            resubscribe=self._resubscribe,
        )
        self._inbox = Inbox()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- setup -------------------------------------------------------------

    def prepare(self) -> None:
        """Restore the stored position and clear what a crash may have left behind."""
        recover(self.layout, self.offsets, self.settings.stream, self.state)
        refresh_disk(self.state, self.disk)

    def _client(self, connection_name: str, on_close: Any = None) -> Consumer:
        settings = self.settings
        return Consumer(
            settings.host,
            settings.port,
            username=settings.user,
            password=settings.password.get_secret_value(),
            vhost=settings.vhost,
            ssl_context=self._ssl,
            heartbeat=HEARTBEAT_SECONDS,
            connection_name=connection_name,
            on_close_handler=on_close,
            recovery_strategy=BackOffRecoveryStrategy(False),  # reconnection is ours
        )

    def _new_consumer(self) -> Consumer:
        self._attempt += 1
        return self._client(
            f"azaion-queue-{self.settings.consumer_name}",
            functools.partial(self._on_connection_closed, self._attempt),
        )

    def _probe_consumer(self) -> Consumer:
        return self._client(f"azaion-queue-{self.settings.consumer_name}-probe")

    # -- lifecycle ---------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("stopping: finishing the message in hand", extra={"reason": reason})
        self.state.stopping = True
        self._stop.set()

    def _resubscribe(self) -> None:
        self._lost.set()  # the current event: _connection_loop replaces it on every subscription

    def _fail(self, error: BaseException) -> None:
        if self.state.fatal is None:
            log.error(
                "stopping on an environment failure; the stored offset is kept",
                exc_info=error,
            )
            self.state.fatal = f"{type(error).__name__}: {error}"
        self.exit_code = EXIT_RETRYABLE
        self.state.stopping = True
        self._stop.set()

    async def run(self, health: HealthServer | None = None) -> int:
        self._loop = loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signal.Signals(signum).name)
        try:
            self.prepare()
        except OSError as error:
            self._fail(error)
            return self.exit_code
        if health is not None:
            health.start()
        probe = TailProbe(self.settings.stream, self._probe_consumer)
        background = [
            asyncio.create_task(self._guarded(self.periodic.housekeeping())),
            asyncio.create_task(self._guarded(self._apply_deliveries())),
            asyncio.create_task(self._guarded(self._commit_timer())),
            asyncio.create_task(self._guarded(self._mirror_offsets())),
            asyncio.create_task(self._guarded(self.periodic.report_status())),
            asyncio.create_task(self._guarded(self.periodic.watch_tail(probe))),
        ]
        try:
            await self._connection_loop()
        finally:
            self.state.stopping = True
            async with self._lock:
                try:
                    await self._commit_locked()
                except OSError as error:
                    self._fail(error)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await probe.close()
            await self.periodic.report_once(timeout=5)
            if health is not None:
                health.stop()
        log.info(
            "stopped",
            extra={"offset": self.state.committed_offset, "exitCode": self.exit_code},
        )
        return self.exit_code

    async def _guarded(self, coroutine: Any) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._fail(error)

    # -- connection --------------------------------------------------------

    async def _connection_loop(self) -> None:
        backoff = Backoff()
        first = True
        refused = 0
        while not self._stop.is_set():
            if not first:
                self.metrics.reconnects.inc()
            first = False
            consumer = self._new_consumer()
            self._lost = lost = asyncio.Event()
            try:
                await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
                spec, origin = await self._start_spec(consumer)
                self._generation += 1
                callback = functools.partial(self._on_message, self._generation)
                await asyncio.wait_for(
                    consumer.subscribe(
                        self.settings.stream,
                        callback,
                        offset_specification=spec,
                        subscriber_name=self.settings.consumer_name,
                        initial_credit=SUBSCRIPTION_CREDIT,
                    ),
                    CONNECT_TIMEOUT,
                )
                self._consumer = consumer
                self.state.connected = True
                self._subscribed_at = time.monotonic()
                backoff.reset()
                refused = 0
                log.info(
                    "subscribed",
                    extra={
                        "stream": self.settings.stream,
                        "from": origin,
                        "offsetType": spec.offset_type.name.lower(),
                        "offset": spec.offset,
                    },
                )
                await _first_of(self._stop.wait(), lost.wait())
            except _CREDENTIAL_ERRORS as error:
                refused += 1
                log.error(
                    "the broker refused the credentials or the vhost",
                    extra={"error": type(error).__name__, "attempt": refused, "vhost": self.settings.vhost},
                )
                if refused >= CREDENTIAL_FAILURES_TO_EXIT:
                    self.state.fatal = f"{type(error).__name__}: check RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_VHOST"
                    self.exit_code = contract.EXIT_PERMANENT
                    self.request_stop("credentials refused")
            except Exception as error:
                log.warning(
                    "cannot consume from the stream; retrying",
                    extra={"error": f"{type(error).__name__}: {error}"[:300]},
                )
            finally:
                self.state.connected = False
                await self._close_consumer(consumer)
            if not self._stop.is_set():
                delay = backoff.next()
                log.info("reconnecting", extra={"inSeconds": round(delay, 2)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _start_spec(self, consumer: Consumer) -> tuple[ConsumerOffsetSpecification, str]:
        """Right after the last durable offset; else the server's; else the configured start."""
        st = self.state
        if st.processed_offset is not None:
            st.start_position = st.processed_offset + 1
            return ConsumerOffsetSpecification(OffsetType.OFFSET, st.start_position), "file"
        try:
            stored = await asyncio.wait_for(
                consumer.query_offset(self.settings.stream, self.settings.consumer_name),
                CONNECT_TIMEOUT,
            )
        except OffsetNotFound:
            stored = None
        if stored is not None:
            st.start_position = stored + 1
            return ConsumerOffsetSpecification(OffsetType.OFFSET, st.start_position), "server"
        start = self.settings.start_from
        if start.kind == "first":
            st.start_position = 0
            return ConsumerOffsetSpecification(OffsetType.FIRST, None), "first"
        st.start_position = None
        if start.kind == "timestamp" and start.timestamp is not None:
            milliseconds = int(start.timestamp.timestamp() * 1000)
            return ConsumerOffsetSpecification(OffsetType.TIMESTAMP, milliseconds), "timestamp"
        kind = OffsetType.LAST if start.kind == "last" else OffsetType.NEXT
        return ConsumerOffsetSpecification(kind, None), start.kind

    def _on_connection_closed(self, attempt: int, info: Any) -> None:
        if attempt != self._attempt:
            return
        log.warning(
            "stream connection lost",
            extra={"reason": str(getattr(info, "reason", info))[:200]},
        )
        self.state.connected = False
        self._lost.set()

    async def _close_consumer(self, consumer: Consumer) -> None:
        """Finish the message in hand, store the offset, then close the client."""
        async with self._lock:
            self._generation += 1  # callbacks still queued in the client do nothing now
            self._inbox.clear()  # the next subscription delivers these again
            try:
                await self._commit_locked()
            except OSError as error:
                self._fail(error)
            offset = self.state.committed_offset
            self._consumer = None
            if offset is not None and offset != self._mirrored and not self._lost.is_set():
                await self._store_on_server(consumer, offset)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.close(), 5)

    async def _store_on_server(self, consumer: Consumer, offset: int) -> None:
        try:
            await asyncio.wait_for(consumer.store_offset(self.settings.stream, self.settings.consumer_name, offset), 5)
            self._mirrored = offset
        except Exception as error:
            log.debug("server-side offset not stored: %s", type(error).__name__)

    # -- messages ----------------------------------------------------------

    async def _on_message(self, generation: int, raw: bytes, context: MessageContext) -> None:
        """Hand a delivery to the applier; wait (holding up the client) while the inbox is full.

        rstream awaits this callback before reading the next frame, so waiting
        here is the flow control: the broker's credit stays bounded and a slow
        disk pauses delivery instead of filling memory.
        """
        try:
            if not self._wanted(generation, context.offset):
                return
            while self.disk.is_critical:  # paused: no credit is consumed while we wait here
                if self._stop.is_set():
                    return
                await asyncio.sleep(0.5)
            while self._inbox.full():
                self._inbox.drained.clear()
                await _first_of(self._inbox.drained.wait(), self._stop.wait())
                if not self._wanted(generation, context.offset):
                    return
            self._inbox.put(Delivery(generation, raw, context.offset, context.timestamp))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # never let rstream swallow it and move on
            self._fail(error)

    async def _apply_deliveries(self) -> None:
        """Apply what the inbox holds, a batch per worker-thread call (not a thread hand-off per message)."""
        while True:
            await self._inbox.delivered.wait()
            async with self._lock:
                batch = self._inbox.take(APPLY_BATCH)
                if not batch:
                    continue
                try:
                    await asyncio.to_thread(self._apply_batch, batch)
                finally:
                    self.state.in_hand_since = None

    def _apply_batch(self, batch: list[Delivery]) -> None:
        """Worker thread, lock held: process each delivery in order, committing whenever due.

        The event loop waits on this thread with the lock held, so nothing else
        changes the offset state meanwhile. A stop request ends the batch at
        the next message: what is left is delivered again after the restart.
        """
        for delivery in batch:
            if not self._wanted(delivery.generation, delivery.offset):
                if self._stop.is_set():
                    return
                continue
            self.state.in_hand_since = time.monotonic()
            outcome = self.processor.process(delivery.raw, delivery.offset, delivery.timestamp, self._barrier)
            self.state.in_hand_since = None
            self._record(outcome, delivery)
            if self.commits.due():
                self._commit_now()

    def _wanted(self, generation: int, offset: int) -> bool:
        if generation != self._generation or self._stop.is_set():
            return False
        processed = self.state.processed_offset
        return processed is None or offset > processed

    def _record(self, outcome: Outcome, delivery: Delivery) -> None:
        st = self.state
        st.processed_offset = delivery.offset
        st.messages_processed += 1
        if outcome.result == "quarantined":
            st.messages_quarantined += 1
            self.metrics.quarantined.labels(outcome.reason or "unknown").inc()
        st.last_message_time = (
            dt.datetime.fromtimestamp(delivery.timestamp / 1000, dt.UTC)
            if delivery.timestamp
            else dt.datetime.now(dt.UTC)
        )
        st.last_progress = time.monotonic()
        self.metrics.messages.labels(outcome.kind, outcome.result).inc()
        self.metrics.apply_seconds.observe(outcome.seconds)
        self.commits.note()

    # -- offsets -----------------------------------------------------------

    def _snapshot(self) -> OffsetState | None:
        """What the offset file would say now; None when there is nothing new to store."""
        st = self.state
        if self.commits.pending == 0 or st.processed_offset is None:
            return None
        return OffsetState(
            stream=self.settings.stream,
            offset=st.processed_offset,
            messages_processed=st.messages_processed,
            messages_quarantined=st.messages_quarantined,
            last_message_time=st.last_message_time,
        )

    async def _commit_locked(self) -> None:
        """Store the offset (the caller holds the lock); then mirror it to the server."""
        await asyncio.to_thread(self._commit_now)

    def _commit_now(self) -> None:
        """Make everything processed durable, then store its offset (a worker thread, lock held)."""
        snapshot = self._snapshot()
        if snapshot is None:
            return
        self.processor.sync()  # the renames of every message up to the offset, first
        self.offsets.save(snapshot)
        self.commits.reset()
        self.state.committed_offset = snapshot.offset
        self.metrics.commits.inc()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._mirror_event.set)

    def _barrier(self) -> None:
        """Store the offset before a message that deletes or revives a name (worker thread, lock held)."""
        try:
            self._commit_now()
        except Exception as error:
            raise BarrierFailed(f"storing the offset before a deletion or revival failed: {error}") from error

    async def _commit_timer(self) -> None:
        """Store the offset of a quiet stream's last messages when the commit interval is up."""
        period = min(0.25, self.commits.interval / 2)
        while True:
            until_due = self.commits.seconds_until_due()
            await asyncio.sleep(period if until_due is None else min(period, until_due))
            if self.commits.due():
                async with self._lock:
                    if self.commits.due():
                        await self._commit_locked()

    async def _mirror_offsets(self) -> None:
        """Copy committed offsets to the server (store_offset), latest first, best effort."""
        while True:
            await self._mirror_event.wait()
            self._mirror_event.clear()
            offset, consumer = self.state.committed_offset, self._consumer
            if offset is None or consumer is None or offset == self._mirrored:
                continue
            await self._store_on_server(consumer, offset)


async def _first_of(*awaitables: Any) -> None:
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
