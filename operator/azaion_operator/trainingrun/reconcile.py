"""One TrainingRun reconcile: gather its state from the API server, :func:`decide`, apply the result.

Every trigger (the run changed, its Job or pod changed, the periodic resync)
ends in :func:`reconcile`, serialised per run, which reads fresh state, so a
replayed or missed event changes nothing. Admission to the GPU queue is
serialised across runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from azaion_contract import LABEL_TRAININGRUN
from azaion_contract.models.trainingrun import PLURAL, TrainingRunSpec, TrainingRunStatus
from azaion_contract.timefmt import now
from azaion_operator import metrics
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import kube
from azaion_operator.kit.apiclient import ApiError
from azaion_operator.kit.conditions import invalid_spec_message
from azaion_operator.kit.names import job_name
from azaion_operator.trainingrun import kueue
from azaion_operator.trainingrun.builders import build_job, build_trainer_identity
from azaion_operator.trainingrun.kueue import local_queue
from azaion_operator.trainingrun.lifecycle import (
    Admission,
    Decision,
    KueueView,
    child_rejected,
    count_disruption,
    decide,
    needs_admission,
    requeued,
    shown_position,
    simply_waiting,
    spec_refused,
)
from azaion_operator.trainingrun.queue import Plan, free_gpus, plan
from azaion_operator.trainingrun.snapshot import QueueSnapshot

log = logging.getLogger(__name__)

Key = tuple[str, str]

_run_locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
#: Runs with a reconcile waiting for their lock (not yet reading the run).
_waiting: set[Key] = set()
_waiting_lock = threading.Lock()
_admission_lock = threading.Lock()
#: When each run was last reconciled (monotonic seconds): the resync's safety net.
last_reconciled: dict[Key, float] = {}
#: The spec generation each run was last reconciled at to the end: a change of
#: the run that leaves it (a status write) needs no reconcile of its own.
handled_generation: dict[Key, int] = {}
#: When the watch last delivered each run (monotonic seconds).
heard_at: dict[Key, float] = {}
#: What admissions decide on (read and written under ``_admission_lock`` only).
_snapshot = QueueSnapshot(
    list_runs=lambda: kube.list_resources(PLURAL),
    list_nodes=kube.list_nodes,
    list_foreign_pods=lambda: kube.list_pods(None, f"!{LABEL_TRAININGRUN}"),
)

#: Kueue's places in line of the Kueue-queued runs' Jobs, one read per LocalQueue and second.
_kueue_positions = kueue.PendingPositions(fetch=kube.get)


def heard(event_type: str | None, run: dict) -> None:
    """A TrainingRun event, as the watch delivered it: the queue knows of the run from now on."""
    _snapshot.heard(run, deleted=event_type == "DELETED")
    meta = run["metadata"]
    heard_at[(meta["namespace"], meta["name"])] = time.monotonic()


def current_runs(relist: bool = True) -> list[dict]:
    """The runs this operator manages, as the watch keeps them; listed again when a minute old,
    unless ``relist`` is False (a metrics scrape never waits for a listing)."""
    return [run for run in _snapshot.runs(relist) if kube.manages(run["metadata"]["namespace"])]


def forget_except(present: Iterable[Key]) -> None:
    """Drop the bookkeeping of runs that no longer exist (their locks, when not held)."""
    keep = set(present)
    for key in [k for k in _run_locks if k not in keep]:
        if not _run_locks[key].locked():
            del _run_locks[key]
    for bookkeeping in (last_reconciled, handled_generation, heard_at):
        for key in [k for k in bookkeeping if k not in keep]:
            del bookkeeping[key]


def reconcile(namespace: str, name: str, config: OperatorConfig) -> Decision | None:
    """Bring one run one step closer to its spec. Safe to call any number of times.

    Calls for a run that already has one waiting to start add nothing (that one
    reads the run after whatever prompted this call) and return None at once:
    a burst of events for one run costs one reconcile, not one each.
    """
    key = (namespace, name)
    with _waiting_lock:
        if key in _waiting:
            return None
        _waiting.add(key)
    started = time.monotonic()
    with _run_locks[key]:
        with _waiting_lock:
            _waiting.discard(key)
        last_reconciled[key] = time.monotonic()
        try:
            return _reconcile_locked(namespace, name, config)
        except Exception:
            metrics.RECONCILE_ERRORS.labels("TrainingRun").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels("TrainingRun").observe(time.monotonic() - started)


def record_disruption(namespace: str, run_name: str, pod: str) -> bool:
    """Count a disrupted pod of the run once (the Job replaces it); True when it was new."""
    with _run_locks[(namespace, run_name)]:
        run = kube.get_resource(PLURAL, namespace, run_name)
        if run is None:
            return False
        decision = count_disruption(run.get("status") or {}, pod)
        if decision is None:
            return False
        _write_status(namespace, run_name, decision.status)
        _record(run, decision)
        return True


def _plan(asking: Key | None) -> Plan:
    """The GPU queue now, from all runs and the GPUs other pods hold (under ``_admission_lock``)."""
    waiting, reserved = _snapshot.line(asking)
    decision = plan(waiting, free_gpus(_snapshot.nodes(), _snapshot.foreign_pods(), reserved))
    metrics.QUEUE_LENGTH.set(len(decision.positions))
    return decision


def _admission(run: dict) -> Admission:
    """Where this run (as just read) stands in the GPU queue."""
    _snapshot.saw(run)
    key = (run["metadata"]["namespace"], run["metadata"]["name"])
    decision = _plan(key)
    return Admission(admitted=key in decision.admitted, position=decision.positions.get(key))


@dataclass(frozen=True)
class QueueMoves:
    """What one plan of the whole queue says to do."""

    #: Runs it admits now (first), and queued runs that are not simply waiting: a reconcile each.
    reconcile: list[Key]
    #: Runs simply waiting whose shown place in line changes: one status write each.
    places: dict[Key, int]


def queue_moves() -> QueueMoves:
    """One plan for the whole queue, instead of one admission per queued run."""
    with _admission_lock:
        decision = _plan(None)
    moves = QueueMoves([key for key in decision.admitted if kube.manages(key[0])], {})
    for key, position in decision.positions.items():
        run = _snapshot.run(key)
        if not kube.manages(key[0]) or run is None:
            continue
        status = run.get("status") or {}
        if not simply_waiting(run["metadata"], status):
            moves.reconcile.append(key)
        elif shown_position(position, status.get("queuePosition")) != status.get("queuePosition"):
            moves.places[key] = position
    return moves


def show_places(places: dict[Key, int]) -> None:
    """Write each waiting run's new place in line: one status write, no read, no admission.

    The write is conditional on the run being as the snapshot holds it; a run
    that changed meanwhile, or whose reconcile is under way, is left to that
    (the next plan shows its place).
    """
    for key, position in places.items():
        lock = _run_locks[key]
        if not lock.acquire(blocking=False):
            continue
        try:
            run = _snapshot.run(key)
            terms = _snapshot.terms(run) if run is not None else None
            if run is None or terms is None or not simply_waiting(run["metadata"], run.get("status") or {}):
                continue
            patch = requeued(run["metadata"], run.get("status") or {}, terms.gpus, position, now())
            if patch is None:
                continue
            written = _write_status(key[0], key[1], patch, run["metadata"].get("resourceVersion", ""))
            if written is not None:
                _snapshot.heard(written)
        except Exception:  # the next plan tries again; one run must not stop the others
            log.exception("showing the place in line of %s failed", key[1])
        finally:
            lock.release()


def _kueue_view(spec: TrainingRunSpec, config: OperatorConfig, job: dict | None) -> KueueView | None:
    """What Kueue did with the run's current Job, when Kueue admits the run's Jobs."""
    queue = local_queue(spec, config)
    if queue is None:
        return None
    if job is None:
        return KueueView(queue)
    meta = job["metadata"]
    selector = f"{kueue.JOB_UID_LABEL}={meta['uid']}"
    workloads = kube.list_custom(kueue.GROUP, kueue.VERSION, kueue.WORKLOADS, meta["namespace"], selector)
    position = _kueue_positions.of(meta["namespace"], queue, meta["uid"]) if kueue.suspended(job) else None
    return KueueView(queue, kueue.preemptions(workloads), position)


def _reconcile_locked(namespace: str, name: str, config: OperatorConfig) -> Decision | None:
    run = kube.get_resource(PLURAL, namespace, name)
    if run is None or run["metadata"].get("deletionTimestamp"):
        return None
    status = run.get("status") or {}
    try:
        spec = TrainingRunSpec.model_validate(run["spec"])
    except ValidationError as error:  # stored before a stricter model: a condition, not a retry loop
        refused = spec_refused(run["metadata"], status, invalid_spec_message(error), now())
        if refused is not None:
            _write_status(namespace, name, refused.status)
            _record(run, refused)
        handled_generation[(namespace, name)] = run["metadata"].get("generation", 0)
        return refused
    if status.get("rejectedGeneration") == run["metadata"].get("generation"):
        handled_generation[(namespace, name)] = run["metadata"]["generation"]
        return None  # refused by the API server; nothing changes until the spec does
    attempts = int(status.get("attempts") or 0)
    job = kube.read_job(namespace, job_name(name, attempts)) if attempts else None
    pods = kube.list_pods(namespace, f"job-name={job_name(name, attempts)}") if job else []
    view = _kueue_view(spec, config, job)

    if needs_admission(spec, status, job, view):
        with _admission_lock:
            admission = _admission(run)
            decision = decide(run["metadata"], spec, status, job, pods, now(), config.training_image, admission)
            takes_gpus = decision.create_attempt is not None
            if takes_gpus:  # the next admission must see these GPUs taken
                carried_out, written = _apply(run, spec, decision, config)
                if written is not None:
                    _snapshot.saw(written)
        if not takes_gpus:  # waiting: its status write need not hold up the next admission
            carried_out, written = _apply(run, spec, decision, config)
            if written is not None:
                _snapshot.heard(written)
        if carried_out:
            _record(run, decision)  # Events and metrics need not hold up the next admission either
    else:
        decision = decide(run["metadata"], spec, status, job, pods, now(), config.training_image, kueue=view)
        if _apply(run, spec, decision, config)[0]:
            _record(run, decision)
    handled_generation[(namespace, name)] = run["metadata"].get("generation", 0)
    if decision.frees_gpus:
        _waker.wake(config)
    return decision


def _apply(run: dict, spec: TrainingRunSpec, decision: Decision, config: OperatorConfig) -> tuple[bool, dict | None]:
    """Carry out a decision but for its Events and metrics (:func:`_record`).

    Returns whether it was carried out (not when the API server refused a child:
    that is a decision of its own) and the run as its status write left it.
    """
    meta = run["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = run.get("status") or {}
    if decision.create_attempt is not None:
        image = status.get("image") or decision.status.get("image") or config.training_image
        job = build_job(meta, spec, decision.create_attempt, image, config, decision.job_deadline_seconds)
        try:
            for obj in [*build_trainer_identity(meta), job]:
                created = kube.create(obj)
        except ApiError as error:
            if error.status not in (400, 422):
                raise
            _refused(run, obj["kind"], error)
            return False, None
        if created:
            metrics.ATTEMPTS.inc()
        if status.get("rejectedGeneration") is not None:
            decision.set_status(rejected_generation=None)  # the changed spec went through
    for job_to_delete in decision.delete_jobs:
        kube.delete_job(namespace, job_to_delete)
    if decision.delete_all_jobs:
        kube.delete_jobs(namespace, f"{LABEL_TRAININGRUN}={name}")
    return True, (_write_status(namespace, name, decision.status) if decision.status else None)


def _write_status(namespace: str, name: str, patch: dict, resource_version: str | None = None) -> dict | None:
    """The one writer of a run's status: every key checked against the contract's status model.

    With ``resource_version``: only if the run is still at that version (None when it is not).
    """
    return kube.patch_status(PLURAL, namespace, name, TrainingRunStatus.checked(patch), resource_version)


def _record(run: dict, decision: Decision) -> None:
    """The decision's metric deltas and Events (after its status is written)."""
    for reason in decision.failed_attempts:
        metrics.FAILURES.labels(reason).inc()
    if decision.preemptions:
        metrics.PREEMPTIONS.inc(decision.preemptions)
    for event_type, reason, message in decision.events:
        kube.post_event(run, event_type, reason, message)


def _refused(run: dict, kind: str, error: ApiError) -> None:
    """A child the API server will never accept as built: a condition and one Event, no hot retries."""
    meta = run["metadata"]
    decision = child_rejected(meta, run.get("status") or {}, kind, kube.api_message(error), now())
    _write_status(meta["namespace"], meta["name"], decision.status)
    metrics.CHILD_REJECTIONS.labels("TrainingRun", kind).inc()
    _record(run, decision)


class _Waker:
    """One thread that wakes the queue, however many runs free GPUs meanwhile.

    A wake asked for while one is under way is done once more after it (it
    may have planned before those GPUs were free); many asked for at once
    are done as one.
    """

    def __init__(self) -> None:
        self._asked = threading.Event()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None
        self._config: OperatorConfig | None = None

    def wake(self, config: OperatorConfig) -> None:
        self._config = config
        self._asked.set()
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="wake-queue", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            try:
                if self._config is not None:
                    wake_queue(self._config)
            except Exception:  # the resync plans the queue again; this thread must live on
                log.exception("waking the GPU queue failed")


_waker = _Waker()


#: A freed GPU rewrites the places in line at most this often (seconds); the resync does it too.
PLACES_EVERY_SECONDS = 2.0
_places_shown_at = 0.0


def wake_queue(config: OperatorConfig) -> None:
    """A run let go of GPUs: start the runs that now fit at once, and show the others their
    new places now and then (every run that starts moves the whole line up: rewriting
    the head of the line on each would be most of the operator's writes in a busy queue)."""
    global _places_shown_at
    moves = queue_moves()
    for namespace, name in moves.reconcile:
        try:
            reconcile(namespace, name, config)
        except Exception:  # the resync retries; one bad run must not block the rest
            log.exception("reconcile of queued run %s failed", name)
    if time.monotonic() - _places_shown_at >= PLACES_EVERY_SECONDS:
        _places_shown_at = time.monotonic()
        show_places(moves.places)
