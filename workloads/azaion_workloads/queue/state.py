"""What the consumer knows about itself, shared by the loop, the probes and the status.

The event loop writes; the HTTP thread only reads single attributes, which is
safe under the GIL and never blocks message handling.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from azaion_contract.models.annotationconsumer import AnnotationConsumerStatus
from azaion_contract.timefmt import rfc3339
from azaion_workloads.status import build, patch

#: /healthz fails when the event loop has not ticked for this long.
LOOP_STALE_SECONDS = 30.0
#: ... or when one message has been in hand for this long (a hung disk).
IN_HAND_STALE_SECONDS = 300.0


@dataclass
class ConsumerState:
    loop_tick: float = field(default_factory=time.monotonic)
    connected: bool = False
    stopping: bool = False
    fatal: str | None = None
    disk_percent: float | None = None
    disk_critical: bool = False
    in_hand_since: float | None = None
    #: Last offset whose effects are durable (None before the first message).
    processed_offset: int | None = None
    #: First offset the subscription can deliver, when known (offset or first).
    start_position: int | None = None
    tail_offset: int | None = None
    waiting_since: float | None = None
    last_progress: float | None = None
    messages_processed: int = 0
    messages_quarantined: int = 0
    last_message_time: dt.datetime | None = None
    committed_offset: int | None = None

    def messages_waiting(self) -> int | None:
        """Offsets between the last processed message and the stream's newest one.

        Offset-tracking records take offset slots too, so while behind this is
        an upper bound; when caught up it is exactly 0. None when unknown.
        """
        if self.tail_offset is None:
            return None
        if self.processed_offset is not None:
            return max(0, self.tail_offset - self.processed_offset)
        if self.start_position is not None:
            return max(0, self.tail_offset - self.start_position + 1)
        return None

    def observe_tail(self, tail: int | None, now: float) -> None:
        """Record a tail probe; remember since when messages have been waiting."""
        if tail is not None or not self.connected:
            self.tail_offset = tail
        if not self.messages_waiting():
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now

    def stalled(self, now: float, subscribed_at: float, after_seconds: float) -> bool:
        """Subscribed, messages waiting for ``after_seconds``, and none applied meanwhile.

        The only way a broken subscription shows itself when the connection
        looks fine (a client task that died, a peer that stopped sending).
        """
        if not self.connected or self.waiting_since is None:
            return False
        if self.disk_critical or self.in_hand_since is not None:
            return False  # paused on purpose, or busy with a slow message
        quiet_since = max(self.waiting_since, self.last_progress or 0.0, subscribed_at)
        return now - quiet_since > after_seconds

    def liveness_problems(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        problems = []
        if now - self.loop_tick > LOOP_STALE_SECONDS:
            problems.append(f"event loop silent for {now - self.loop_tick:.0f}s")
        if self.in_hand_since is not None and now - self.in_hand_since > IN_HAND_STALE_SECONDS:
            problems.append(f"one message in hand for {now - self.in_hand_since:.0f}s")
        if self.fatal:
            problems.append(f"fatal: {self.fatal}")
        return problems

    def readiness_problems(self, now: float | None = None) -> list[str]:
        problems = self.liveness_problems(now)
        if not self.connected:
            problems.append("not subscribed to the stream")
        if self.disk_critical:
            problems.append(f"data volume {self.disk_percent:.1f}% full: consuming paused")
        if self.stopping:
            problems.append("shutting down")
        return problems

    def status_fields(self) -> dict[str, Any]:
        """The AnnotationConsumer status keys this workload owns (a merge patch: unknowns left out)."""
        fields: dict[str, Any] = {
            "messages_processed": self.messages_processed,
            "messages_quarantined": self.messages_quarantined,
            "connected": self.connected,
            "reported_at": rfc3339(milliseconds=True),
        }
        if self.processed_offset is not None:
            fields["offset"] = self.processed_offset
        if self.last_message_time is not None:
            fields["last_message_time"] = rfc3339(self.last_message_time, milliseconds=True)
        if self.disk_percent is not None:
            fields["disk_usage_percent"] = round(self.disk_percent, 2)
        waiting = self.messages_waiting()
        if waiting is not None:
            fields["messages_waiting"] = waiting
        return patch(build(AnnotationConsumerStatus, **fields))
