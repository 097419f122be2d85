"""Progress of a run: status fields for the TrainingRun, heartbeat, stop requests."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any, Literal

from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.status import StatusReporter
from azaion_workloads.training.errors import Interrupted

log = logging.getLogger(__name__)

Step = Literal["dataset", "training", "export", "encrypt", "publish", "promote", "done"]


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class StopFlag:
    """Set by SIGTERM/SIGINT; the work checks it at safe points.

    A second signal while a stop is pending means "now": it raises at once.
    """

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise Interrupted(f"second signal {signum}: stopping immediately")
        log.warning("signal %s received: stopping at the next safe point", signum)
        self.requested = True

    def check(self, where: str) -> None:
        if self.requested:
            raise Interrupted(f"stopped at a safe point ({where})")


class Progress:
    """Writes the workload-owned status fields and beats the heartbeat."""

    def __init__(self, reporter: StatusReporter, heartbeat: Heartbeat, stop: StopFlag) -> None:
        self.reporter = reporter
        self.heartbeat = heartbeat
        self.stop = stop
        self.progress: dict[str, Any] = {}

    def beat(self) -> None:
        self.heartbeat.beat()

    def beat_or_stop(self, where: str) -> None:
        """For loops whose every iteration is a safe point (partial output is discarded)."""
        self.heartbeat.beat()
        self.stop.check(where)

    def report(self, fields: dict[str, Any]) -> None:
        self.heartbeat.beat(force=True)
        self.reporter.report(fields)

    def step(self, step: Step, **extra: Any) -> None:
        self.progress.update(step=step, **extra)
        self.progress["updatedAt"] = now_rfc3339()
        self.report({"progress": dict(self.progress)})

    def artifacts(self, **fields: Any) -> None:
        self.report({"artifacts": fields})


class keepalive:
    """Beat from a thread while one long opaque call runs (an export, an engine build).

    The thread stops beating after ``limit`` seconds, so a call that hangs
    still lets the liveness probe fail, only later.
    """

    def __init__(self, progress: Progress, limit: float) -> None:
        import threading

        self.progress, self.limit = progress, limit
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._done.wait(2.0) and time.monotonic() < deadline:
            self.progress.beat()

    def __enter__(self) -> keepalive:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
