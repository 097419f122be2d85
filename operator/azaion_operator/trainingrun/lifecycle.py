"""The TrainingRun state machine, as a pure function of what the API server shows.

:func:`decide` reads the run, its current Job and that Job's pods, and says
what to create or delete and which status fields to write. It keeps no state
of its own: failures and preemptions are counted from the attempt history in
the status, so deciding twice on the same inputs (a retried handler, a
restarted operator) yields the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azaion_contract.models.trainingrun import AttemptRecord, Phase, ResumePoint, TrainingRunSpec, TrainingRunStatus
from azaion_contract.timefmt import parse_rfc3339_or_none, rfc3339
from azaion_operator.kit.conditions import condition, find, keep_transition_times
from azaion_operator.kit.names import job_name
from azaion_operator.kit.pods import pod_problem
from azaion_operator.trainingrun.kueue import suspended as kueue_suspended
from azaion_operator.trainingrun.outcomes import AttemptOutcome, classify, is_disrupted

MAX_BACKOFF = timedelta(minutes=10)
TERMINAL = {Phase.SUCCEEDED.value, Phase.FAILED.value}
# In the attempt history every failure is "Failed"; its reason says which kind.
_HISTORY_OUTCOME = {"PermanentError": "Failed", "DeadlineExceeded": "Failed"}


@dataclass(frozen=True)
class Admission:
    admitted: bool
    position: int | None = None


@dataclass(frozen=True)
class KueueView:
    """A Kueue-queued run: its LocalQueue, how often Kueue preempted the current attempt's Job,
    and the Job's place in its ClusterQueue while it waits (None where Kueue's visibility API
    does not say)."""

    queue: str
    preemptions: int = 0
    position: int | None = None


@dataclass
class Decision:
    #: The status merge patch (wire names); written through :meth:`set_status`.
    status: dict[str, Any] = field(default_factory=dict)
    create_attempt: int | None = None
    job_deadline_seconds: int | None = None
    delete_jobs: list[str] = field(default_factory=list)
    delete_all_jobs: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    #: Reasons of the attempts this decision closed as failed: the failure metric's
    #: increments (a disruption or a retry notice is never one).
    failed_attempts: list[str] = field(default_factory=list)
    #: Pods newly counted as disrupted: the preemption metric's increment.
    preemptions: int = 0

    @property
    def frees_gpus(self) -> bool:
        return bool(self.delete_jobs) or self.status.get("phase") in TERMINAL | {Phase.SUSPENDED.value}

    def set_status(self, **fields: Any) -> None:
        """Add :class:`TrainingRunStatus` fields (Python names) to the patch.

        Built through the model, so a misspelt name is a ``TypeError`` here, not
        a key nobody reads; a field set to None stays in the patch as null,
        which removes it from the status (a merge patch).
        """
        self.status.update(TrainingRunStatus.patch(**fields))


timestamp = rfc3339


def needs_admission(
    spec: TrainingRunSpec, status: dict[str, Any], job: dict[str, Any] | None, kueue: KueueView | None = None
) -> bool:
    """Only a GPU run about to start an attempt has to ask the built-in queue (Kueue admits its own)."""
    if kueue is not None:
        return False
    attempt_active = job is not None and _open_attempt(
        status.get("attemptHistory") or [], int(status.get("attempts") or 0)
    )
    return not attempt_active and spec.resources.gpus > 0 and not spec.suspend and status.get("phase") not in TERMINAL


# Reasons a Pending run is stuck rather than on its way.
STUCK_REASONS = {"ImagePullBackOff", "CreateContainerConfigError", "Unschedulable", "ChildRejected", "InvalidSpec"}


#: The Tracking condition for each state the trainer reports in status.mlflow: (holds, reason).
_TRACKING = {"Logging": (True, "Logging"), "Retrying": (False, "TrackingServerUnavailable"), "Logged": (True, "Logged")}


def tracking_condition(status: dict[str, Any], now: str, generation: int) -> dict[str, Any] | None:
    """Whether MLflow takes what the trainer sends (from the pod's status.mlflow); None without tracking."""
    reported = status.get("mlflow") or {}
    if reported.get("state") not in _TRACKING:
        return None
    holds, reason = _TRACKING[reported["state"]]
    if reported["state"] == "Retrying":
        message = (
            "the MLflow server does not take what the trainer sends; it keeps the records and tries again "
            f"while training goes on; last error: {reported.get('lastError', 'unknown')}"
        )
    elif reported["state"] == "Logged":
        version = reported.get("modelVersion")
        message = f"logged to MLflow run {reported.get('runId')}" + (f"; model version {version}" if version else "")
    else:
        message = f"logging to MLflow run {reported.get('runId') or '(being created)'}"
    return condition("Tracking", holds, reason, message, now, generation)


def tracking_stale(status: dict[str, Any]) -> bool:
    """The pod reported an MLflow state that the Tracking condition does not show yet."""
    wanted = tracking_condition(status, "", 0)
    shown = find(status.get("conditions"), "Tracking")
    if wanted is None:
        return False
    return shown is None or (shown.get("status"), shown.get("reason"), shown.get("message")) != (
        wanted["status"],
        wanted["reason"],
        wanted["message"],
    )


def _conditions(
    phase: str, reason: str, message: str, now: str, generation: int, status: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One condition per question a user asks: is it progressing, did it succeed, did it fail
    (and, with tracking.mlflow, does MLflow get what the trainer logs)."""
    progressing = phase in (Phase.PENDING, Phase.RUNNING) and reason not in STUCK_REASONS
    finished, failed = phase in TERMINAL, phase == Phase.FAILED
    tracking = tracking_condition(status or {}, now, generation)
    conditions = [
        condition("Progressing", progressing, reason, message, now, generation),
        condition(
            "Succeeded",
            phase == Phase.SUCCEEDED,
            reason if finished else "NotFinished",
            message if finished else "",
            now,
            generation,
        ),
        condition("Failed", failed, reason if failed else "NoFailure", message if failed else "", now, generation),
    ]
    return [*conditions, tracking] if tracking is not None else conditions


class _Builder:
    """Accumulates one decision; ``set_phase`` also writes conditions and an Event on change."""

    def __init__(self, meta: dict[str, Any], status: dict[str, Any], now: datetime) -> None:
        self.meta, self.old, self.now = meta, status, now
        self.decision = Decision()
        self.history: list[dict[str, Any]] = [dict(r) for r in status.get("attemptHistory") or []]

    def set_phase(self, phase: Phase, reason: str, message: str, event_type: str = "Normal") -> None:
        generation = self.meta.get("generation", 1)
        conditions = _conditions(phase.value, reason, message, timestamp(self.now), generation, self.old)
        self.decision.set_status(
            phase=phase,
            observed_generation=generation,
            conditions=keep_transition_times(conditions, self.old.get("conditions")),
        )
        if phase != Phase.QUEUED and self.old.get("queuePosition") is not None:
            self.decision.set_status(queue_position=None)  # only a run in line shows a place
        old_progressing = find(self.old.get("conditions"), "Progressing") or {}
        if self.old.get("phase") != phase.value or old_progressing.get("reason") != reason:
            self.decision.events.append((event_type, reason, message))

    def record(self, attempt: int, outcome: AttemptOutcome | None, *, kind: str | None = None) -> None:
        """Close (or open) the history entry of ``attempt``."""
        entry = next((r for r in self.history if r.get("attempt") == attempt), None)
        if entry is None:
            entry = AttemptRecord.patch(
                attempt=attempt,
                job_name=job_name(self.meta["name"], attempt),
                outcome="Running",
                started_at=timestamp(self.now),
            )
            self.history.append(entry)
        if outcome is not None:
            was_open = entry.get("outcome") == "Running"
            closed: dict[str, Any] = {
                "outcome": kind or _HISTORY_OUTCOME.get(outcome.kind, outcome.kind),
                "reason": outcome.reason,
                "message": outcome.message,
                "finished_at": timestamp(self.now),
            }
            if outcome.exit_code is not None:
                closed["exit_code"] = outcome.exit_code
            # Validated whole: AttemptRecord's required fields (attempt, jobName) are the open entry's.
            recorded = AttemptRecord.model_validate(entry).model_dump(exclude_unset=True)
            entry.update(AttemptRecord.patch(**{**recorded, **closed}))
            if was_open and entry["outcome"] == "Failed":
                self.decision.failed_attempts.append(outcome.reason)

    def finish(self) -> Decision:
        self._keep_resume_point()
        self.decision.set_status(
            attempt_history=self.history,
            failures=sum(1 for r in self.history if r.get("outcome") == "Failed"),
            preemptions=_history_preemptions(self.history) + len(self.old.get("preemptedPods") or []),
        )
        return self.decision

    def note_evictions(self, attempt: int, count: int) -> None:
        """Record Kueue's preemptions of ``attempt``'s Job; each new one is a preemption and an Event."""
        entry = next((r for r in self.history if r.get("attempt") == attempt), None)
        counted = int((entry or {}).get("evictions") or 0)
        if entry is None or count <= counted:
            return
        entry["evictions"] = count
        self.decision.preemptions += count - counted
        self.decision.events.append(
            (
                "Warning",
                "Preempted",
                f"Kueue preempted attempt {attempt}; it resumes from its checkpoint when admitted again",
            )
        )

    def _keep_resume_point(self) -> None:
        """Copy the pod's ``progress.resumedFrom`` into its attempt's entry: the next attempt overwrites it."""
        resumed = (self.old.get("progress") or {}).get("resumedFrom")
        pod = str((resumed or {}).get("pod") or "")
        try:
            point = ResumePoint.checked(dict(resumed or {}))
        except (TypeError, ValueError):  # written by a pod of another version: not worth failing a reconcile
            return
        for entry in self.history:
            if pod.startswith(f"{entry.get('jobName')}-"):  # a Job's pods are named <job>-<suffix>
                entry["resumedFrom"] = point


#: Places in line shown exactly; further back a shown place changes once it is a quarter off
#: (a run that joins a line of a thousand then has its place rewritten about 16 times, not 45).
EXACT_POSITIONS = 10


def shown_position(position: int, shown: int | None) -> int:
    """The place in line a queued run's status shows.

    Exact near the head of the line; further back the shown place stays until
    the true one is 25% away, so a queue of a thousand runs does not rewrite
    every queued run's status each time one run starts.
    """
    if shown is None or min(position, shown) <= EXACT_POSITIONS or abs(position - shown) * 4 >= shown:
        return position
    return shown


def _waiting_message(gpus: int, position: int | None) -> str:
    return f"waiting for {gpus} free GPU(s); position {position}"


def simply_waiting(meta: dict[str, Any], status: dict[str, Any]) -> bool:
    """Whether the run waits for GPUs in the built-in queue at its current spec, and nothing else."""
    progressing = find(status.get("conditions"), "Progressing") or {}
    return (
        status.get("phase") == Phase.QUEUED.value
        and progressing.get("reason") == "WaitingForGPU"
        and status.get("observedGeneration") == meta.get("generation", 1)
    )


def requeued(meta: dict[str, Any], status: dict[str, Any], gpus: int, position: int, now: datetime) -> dict | None:
    """The status patch that shows a :func:`simply_waiting` run at a new place in line; None
    when the place it shows stays.

    The same fields as :func:`decide` writes for a queued run: the place, and the
    Progressing condition's message; nothing else of the status moves.
    """
    shown = shown_position(position, status.get("queuePosition"))
    if shown == status.get("queuePosition"):
        return None
    message = _waiting_message(gpus, shown)
    conditions = _conditions(
        Phase.QUEUED.value, "WaitingForGPU", message, timestamp(now), meta.get("generation", 1), status
    )
    return {"queuePosition": shown, "conditions": keep_transition_times(conditions, status.get("conditions"))}


def _backoff(spec: TrainingRunSpec, failures: int) -> timedelta:
    base = timedelta(seconds=spec.failure_policy.backoff_seconds)
    return min(MAX_BACKOFF, base * (2 ** max(0, failures - 1)))


def ttl_expired(spec: TrainingRunSpec, status: dict[str, Any], now: datetime) -> bool:
    """A finished run whose Jobs and pods are due for deletion (ttlSecondsAfterFinished)."""
    ttl = spec.ttl_seconds_after_finished
    finished = parse_rfc3339_or_none(status.get("completionTime"))
    return (
        status.get("phase") in TERMINAL
        and ttl is not None
        and finished is not None
        and now >= finished + timedelta(seconds=ttl)
    )


def count_disruption(status: dict[str, Any], pod: str) -> Decision | None:
    """A disrupted pod of the current attempt counts once as a preemption; the Job replaces it."""
    counted = list(status.get("preemptedPods") or [])
    if pod in counted:
        return None
    decision = Decision(preemptions=1)
    decision.set_status(preempted_pods=[*counted, pod])
    decision.events.append(("Warning", "Preempted", f"pod {pod} was disrupted; the Job replaces it"))
    return decision


def decide(
    meta: dict[str, Any],
    spec: TrainingRunSpec,
    status: dict[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    now: datetime,
    default_image: str,
    admission: Admission | None = None,
    kueue: KueueView | None = None,
) -> Decision:
    """What to do next for one TrainingRun (``kueue``: what Kueue did with it, when Kueue admits it)."""
    b = _Builder(meta, status, now)
    phase = status.get("phase")
    attempts = int(status.get("attempts") or 0)

    if phase in TERMINAL:
        if ttl_expired(spec, status, now) and job is not None:
            b.decision.delete_all_jobs = True
        if tracking_stale(status):  # the trainer's last MLflow report came after the run finished
            tracking = tracking_condition(status, timestamp(now), meta.get("generation", 1))
            others = [c for c in status.get("conditions") or [] if c.get("type") != "Tracking"]
            b.decision.set_status(conditions=keep_transition_times([*others, tracking], status.get("conditions")))
        return b.decision

    if not status.get("image"):
        b.decision.set_status(image=spec.image or default_image)

    # The current attempt's Job, while its outcome is not yet recorded.
    if job is not None and _open_attempt(b.history, attempts):
        if kueue is not None:
            b.note_evictions(attempts, kueue.preemptions)
        outcome = classify(job, pods)
        if spec.suspend and not outcome.finished:
            b.record(attempts, AttemptOutcome("Running", "Suspended", "stopped by suspend"), kind="Stopped")
            b.decision.delete_jobs.append(job["metadata"]["name"])
            b.set_phase(Phase.SUSPENDED, "Suspended", f"attempt {attempts} stopped; it resumes from its checkpoint")
            return b.finish()
        if not outcome.finished:
            return _while_running(b, spec, status, job, pods, attempts, kueue)
        return _after_attempt(b, spec, status, attempts, outcome)

    if job is None and attempts > 0 and _open_attempt(b.history, attempts):
        # The Job vanished without an observed outcome (deleted by hand, or by suspend).
        gone = AttemptOutcome("Preempted", "JobDeleted", f"the Job of attempt {attempts} was deleted")
        b.record(attempts, gone, kind="Stopped" if spec.suspend else "Preempted")

    if spec.suspend:
        b.set_phase(Phase.SUSPENDED, "Suspended", "the run is suspended")
        return b.finish()

    next_at = parse_rfc3339_or_none(status.get("nextAttemptAt"))
    if next_at and now < next_at:
        return b.finish()

    deadline = spec.active_deadline_seconds
    started = parse_rfc3339_or_none(status.get("startTime"))
    remaining = None
    if deadline is not None and started is not None:
        remaining = int(deadline - (now - started).total_seconds())
        if remaining <= 0:
            b.decision.set_status(completion_time=timestamp(now))
            b.set_phase(
                Phase.FAILED, "DeadlineExceeded", f"the run exceeded activeDeadlineSeconds={deadline}", "Warning"
            )
            return b.finish()

    if spec.resources.gpus > 0 and kueue is None and not (admission and admission.admitted):
        position = admission.position if admission else None
        if position is not None:
            position = shown_position(position, status.get("queuePosition"))
        b.decision.set_status(queue_position=position)
        b.set_phase(Phase.QUEUED, "WaitingForGPU", _waiting_message(spec.resources.gpus, position))
        return b.finish()

    attempt = attempts + 1
    b.decision.create_attempt = attempt
    b.decision.job_deadline_seconds = remaining if remaining is not None else deadline
    b.record(attempt, None)
    b.decision.set_status(
        attempts=attempt,
        job_name=job_name(meta["name"], attempt),
        queue_position=None,
        next_attempt_at=None,
    )
    if not status.get("startTime"):
        b.decision.set_status(start_time=timestamp(now))
    b.set_phase(Phase.PENDING, "AttemptStarted", f"attempt {attempt} started (Job {job_name(meta['name'], attempt)})")
    return b.finish()


def child_rejected(
    meta: dict[str, Any], status: dict[str, Any], kind: str, api_message: str, now: datetime
) -> Decision:
    """The API server refused an object built from this spec: say so, and wait for the spec to change.

    Retrying cannot help until the spec changes, so the run records the generation
    that was refused and the operator leaves it alone until ``metadata.generation``
    moves on; one Warning Event, not one per retry.
    """
    b = _Builder(meta, status, now)
    b.set_phase(
        Phase.PENDING,
        "ChildRejected",
        f"the API server refused the run's {kind}; fix the spec: {api_message}",
        "Warning",
    )
    b.decision.set_status(rejected_generation=meta.get("generation", 1))
    return b.decision


def spec_refused(meta: dict[str, Any], status: dict[str, Any], problems: str, now: datetime) -> Decision | None:
    """A stored spec this operator's model refuses: say which fields, once, and start nothing.

    None when the run already says so (no write, no second Event); the next
    change of the spec is looked at afresh.
    """
    message = f"the stored spec does not satisfy this operator's TrainingRun model; fix it: {problems}"
    shown = find(status.get("conditions"), "Progressing") or {}
    if status.get("phase") in TERMINAL or (shown.get("reason") == "InvalidSpec" and shown.get("message") == message):
        return None  # a finished run has nothing left to start
    b = _Builder(meta, status, now)
    b.set_phase(Phase(status["phase"]) if status.get("phase") else Phase.PENDING, "InvalidSpec", message, "Warning")
    return b.decision


def _history_preemptions(history: list[dict[str, Any]]) -> int:
    """Attempts ended by a disruption, and Kueue's preemptions of attempts' Jobs."""
    return sum(1 for r in history if r.get("outcome") == "Preempted") + sum(
        int(r.get("evictions") or 0) for r in history
    )


def _live(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Pending", "Running") and not (pod.get("metadata") or {}).get(
        "deletionTimestamp"
    )


def _open_attempt(history: list[dict[str, Any]], attempt: int) -> bool:
    entry = next((r for r in history if r.get("attempt") == attempt), None)
    return entry is not None and entry.get("outcome") == "Running"


def _while_running(
    b: _Builder,
    spec: TrainingRunSpec,
    status: dict[str, Any],
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    attempts: int,
    kueue: KueueView | None = None,
) -> Decision:
    disrupted = len(status.get("preemptedPods") or []) + _history_preemptions(b.history)
    if disrupted > spec.failure_policy.max_preemptions:
        message = f"{disrupted} disruptions exceed failurePolicy.maxPreemptions={spec.failure_policy.max_preemptions}"
        b.record(attempts, AttemptOutcome("Preempted", "PreemptionBudgetExhausted", message), kind="Stopped")
        b.decision.delete_jobs.append(job["metadata"]["name"])
        b.decision.set_status(completion_time=timestamp(b.now))
        b.set_phase(Phase.FAILED, "PreemptionBudgetExhausted", message, "Warning")
        return b.finish()
    problem = pod_problem(pods)
    if kueue is not None and kueue_suspended(job) and not any(_live(p) for p in pods):
        shown = None if kueue.position is None else shown_position(kueue.position, status.get("queuePosition"))
        b.decision.set_status(queue_position=shown)
        place = "" if shown is None else f"; position {shown} in its ClusterQueue"
        waits = f"attempt {attempts} waits for Kueue to admit it (LocalQueue {kueue.queue}{place})"
        b.set_phase(Phase.QUEUED, "WaitingForKueue", waits)
    elif problem:
        b.set_phase(Phase.PENDING, problem[0], problem[1], "Warning")
    elif any((p.get("status") or {}).get("phase") == "Running" and not is_disrupted(p) for p in pods):
        b.set_phase(Phase.RUNNING, "TrainerRunning", f"attempt {attempts} is running")
    elif any((p.get("status") or {}).get("phase") == "Succeeded" for p in pods):
        # The trainer exited 0 and its Job has not said Complete yet: finishing, not starting over.
        b.set_phase(Phase.RUNNING, "TrainerFinished", f"attempt {attempts} finished; its Job is completing")
    else:
        b.set_phase(Phase.PENDING, "AttemptStarting", f"attempt {attempts} is starting")
    return b.finish()


def _after_attempt(
    b: _Builder, spec: TrainingRunSpec, status: dict[str, Any], attempts: int, outcome: AttemptOutcome
) -> Decision:
    b.record(attempts, outcome)
    label = f"attempt {attempts}: {outcome.message}"
    if outcome.kind == "Succeeded":
        b.decision.set_status(completion_time=timestamp(b.now))
        b.set_phase(Phase.SUCCEEDED, "Succeeded", f"training finished in {attempts} attempt(s)")
        return b.finish()
    if outcome.kind in ("PermanentError", "DeadlineExceeded"):
        b.decision.set_status(completion_time=timestamp(b.now))
        b.set_phase(Phase.FAILED, outcome.reason, label, "Warning")
        return b.finish()

    decision = b.finish()
    if outcome.kind == "Failed" and decision.status["failures"] >= spec.failure_policy.max_failures:
        decision.set_status(completion_time=timestamp(b.now))
        b.set_phase(
            Phase.FAILED,
            "FailureBudgetExhausted",
            f"{decision.status['failures']} failed attempts reached failurePolicy.maxFailures="
            f"{spec.failure_policy.max_failures}; last {label}",
            "Warning",
        )
        return b.finish()
    if outcome.kind == "Preempted" and decision.status["preemptions"] > spec.failure_policy.max_preemptions:
        decision.set_status(completion_time=timestamp(b.now))
        b.set_phase(
            Phase.FAILED,
            "PreemptionBudgetExhausted",
            f"{decision.status['preemptions']} disruptions exceed failurePolicy.maxPreemptions="
            f"{spec.failure_policy.max_preemptions}",
            "Warning",
        )
        return b.finish()
    delay = _backoff(spec, decision.status["failures"]) if outcome.kind == "Failed" else timedelta(0)
    decision.set_status(next_attempt_at=timestamp(b.now + delay))
    b.set_phase(
        Phase.PENDING,
        "RetryingAfterFailure" if outcome.kind == "Failed" else "RetryingAfterDisruption",
        f"{label}; attempt {attempts + 1} resumes from the last checkpoint in {int(delay.total_seconds())}s",
        "Warning",
    )
    return b.finish()
