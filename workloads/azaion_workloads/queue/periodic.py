"""The consumer's periodic work beside the message loop: liveness tick and disk guard,
status reports, and the stream-tail watch that notices a silent subscription."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azaion_workloads.queue.disk import DiskGuard
from azaion_workloads.queue.state import ConsumerState
from azaion_workloads.queue.tail import TailProbe
from azaion_workloads.status import StatusReporter

log = logging.getLogger(__name__)

#: Resubscribe when messages are known to wait but none arrived for this long.
STALL_SECONDS = 60.0
#: Shortest interval between two tail probes (messagesWaiting, stall detection).
TAIL_PROBE_SECONDS = 10.0


def refresh_disk(state: ConsumerState, disk: DiskGuard) -> None:
    disk.check()
    state.disk_percent = disk.percent
    state.disk_critical = disk.is_critical


@dataclass
class PeriodicTasks:
    """Coroutines the consumer runs next to its connection loop; each runs until cancelled.

    ``subscribed_at`` tells when the current subscription began; ``resubscribe``
    drops it (the consumer's connection loop then makes a new one).
    """

    state: ConsumerState
    disk: DiskGuard
    reporter: StatusReporter | None
    status_interval_seconds: float
    subscribed_at: Callable[[], float]
    resubscribe: Callable[[], None]
    _reported_waiting: bool = field(default=False, init=False)

    async def housekeeping(self) -> None:
        """Liveness tick and disk guard, once a second."""
        while True:
            self.state.loop_tick = time.monotonic()
            refresh_disk(self.state, self.disk)
            await asyncio.sleep(1.0)

    async def report_status(self) -> None:
        while True:
            await self.report_once(timeout=30)
            await asyncio.sleep(self.status_interval_seconds)

    async def report_once(self, timeout: float) -> None:
        if self.reporter is None:
            return
        fields = self.state.status_fields()
        if "messagesWaiting" in fields:
            self._reported_waiting = True
        elif self._reported_waiting:
            fields["messagesWaiting"] = None  # merge patch: null removes a stale value
            self._reported_waiting = False
        try:
            await asyncio.wait_for(asyncio.to_thread(self.reporter.report, fields), timeout)
        except Exception as error:
            log.warning("status report failed: %s", type(error).__name__)

    async def watch_tail(self, probe: TailProbe) -> None:
        """Track the stream's newest offset; resubscribe when messages wait but none come."""
        # Each probe receives the newest chunk (possibly megabytes of images), so
        # it runs at most every TAIL_PROBE_SECONDS whatever the status interval.
        period = max(TAIL_PROBE_SECONDS, self.status_interval_seconds)
        warned_behind = False
        while True:
            st = self.state
            # Compared with the position before the probe: messages applied while it ran
            # are newer than the tail it saw, and must not look like a recreated stream.
            position = st.processed_offset
            tail = await probe.tail()
            st.observe_tail(tail, time.monotonic())
            behind = tail is not None and position is not None and tail < position
            if behind and not warned_behind:
                # Offsets never go back in a stream: it was deleted and created anew,
                # and the stored offset would skip its first messages.
                log.error(
                    "the stream ends before the stored offset: was it recreated? "
                    "Remove the offset file (and the server-side offset) to read it from the start",
                    extra={"tail": tail, "offset": st.processed_offset},
                )
            warned_behind = behind
            if st.stalled(time.monotonic(), self.subscribed_at(), STALL_SECONDS):
                log.warning(
                    "messages wait but none arrive: resubscribing",
                    extra={"waiting": st.messages_waiting(), "offset": st.processed_offset},
                )
                self.resubscribe()
            await asyncio.sleep(period)
