"""Progress of a run: status fields for the TrainingRun, heartbeat, stop requests."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any, Literal

from azaion_contract.models.trainingrun import Artifacts, Checkpoint, CheckpointMirror, MlflowStatus, TrainingRunStatus
from azaion_contract.models.trainingrun import Progress as ProgressStatus
from azaion_contract.timefmt import rfc3339
from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.status import StatusReporter, build, patch
from azaion_workloads.training.errors import Interrupted

log = logging.getLogger(__name__)

Step = Literal["dataset", "training", "export", "encrypt", "publish", "promote", "done"]


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
        #: Progress fields by Python name; every report sends all of them.
        self.progress: dict[str, Any] = {}
        #: Reports come from the training thread and the checkpoint mirror's upload thread.
        self._reporting = threading.Lock()

    def beat(self) -> None:
        self.heartbeat.beat()

    def beat_or_stop(self, where: str) -> None:
        """For loops whose every iteration is a safe point (partial output is discarded)."""
        self.heartbeat.beat()
        self.stop.check(where)

    def report(self, status: TrainingRunStatus, *, beat: bool = True) -> None:
        """Merge the fields set on ``status`` (and only those) into the resource's status.

        ``beat=False`` for reports from a helper thread: only the work loop beats
        the heartbeat, so a hung loop still lets the liveness probe fail.
        """
        with self._reporting:
            if beat:
                self.heartbeat.beat(force=True)
            self.reporter.report(patch(status))

    def step(self, step: Step, **extra: Any) -> None:
        """Report the current step; ``extra`` are further :class:`ProgressStatus` fields."""
        fields = {**self.progress, "step": step, **extra, "updated_at": rfc3339()}
        progress = build(ProgressStatus, **fields)  # a bad name raises before it is kept
        self.progress = fields
        self.report(build(TrainingRunStatus, progress=progress))

    def checkpoint(self, **fields: Any) -> None:
        """Report the newest verified checkpoint (:class:`Checkpoint` fields)."""
        self.report(build(TrainingRunStatus, last_checkpoint=build(Checkpoint, **fields)))

    def mirror(self, **fields: Any) -> None:
        """Report the checkpoint mirror's state (:class:`CheckpointMirror` fields), from its upload thread."""
        self.report(build(TrainingRunStatus, checkpoint_mirror=build(CheckpointMirror, **fields)), beat=False)

    def mlflow(self, **fields: Any) -> None:
        """Report what was logged to MLflow (:class:`MlflowStatus` fields), from the tracker's thread."""
        self.report(build(TrainingRunStatus, mlflow=build(MlflowStatus, **fields)), beat=False)

    def artifacts(self, **fields: Any) -> Artifacts:
        """Report produced artifacts (:class:`Artifacts` fields); returns what was sent."""
        artifacts = build(Artifacts, **fields)
        self.report(build(TrainingRunStatus, artifacts=artifacts))
        return artifacts


class keepalive:
    """Beat from a thread while one long opaque call runs (an export, an engine build).

    The thread stops beating after ``limit`` seconds, so a call that hangs
    still lets the liveness probe fail, only later.
    """

    def __init__(self, progress: Progress, limit: float) -> None:
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
