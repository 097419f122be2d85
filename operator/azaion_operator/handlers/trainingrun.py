"""kopf handlers for TrainingRuns: they gather state, call :func:`decide`, apply the result.

Every trigger (the run changed, its Job or pod changed, a timer) ends in the
same :func:`reconcile`, serialised per run, which reads fresh state from the
API server. Admission to the GPU queue is serialised across runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from azaion_contract import API_GROUP, API_VERSION
from azaion_contract.models.trainingrun import PLURAL, Phase, TrainingRunSpec
from azaion_operator import kube, metrics
from azaion_operator.builders.trainingjob import build_job, build_trainer_identity
from azaion_operator.config import OperatorConfig
from azaion_operator.handlers import resync
from azaion_operator.lifecycle import (
    TERMINAL,
    Admission,
    Decision,
    child_rejected,
    decide,
    needs_admission,
    parse_time,
)
from azaion_operator.names import LABEL_TRAININGRUN, job_name
from azaion_operator.outcomes import is_disrupted
from azaion_operator.queueing import Waiting, free_gpus, plan

log = logging.getLogger(__name__)

CONFIG = OperatorConfig.from_env()
_run_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_admission_lock = threading.Lock()
_last_reconciled: dict[tuple[str, str], float] = {}
SAFETY_NET_SECONDS = 60.0
TTL_CHECK_SECONDS = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


def _post_events(run: dict[str, Any], decision: Decision) -> None:
    for event_type, reason, message in decision.events:
        kube.post_event(run, event_type, reason, message)


def _admission(namespace: str, name: str) -> Admission:
    """Where this run stands in the GPU queue, from all runs in the cluster."""
    runs = kube.list_resources(PLURAL)
    waiting: list[Waiting] = []
    reserved = 0
    for other in runs:
        meta, status = other["metadata"], other.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        try:
            spec = TrainingRunSpec.model_validate(other["spec"])
        except ValueError:
            continue
        if spec.resources.gpus == 0 or status.get("phase") in TERMINAL:
            continue
        key = (meta["namespace"], meta["name"])
        # A run between attempts (retry backoff) keeps its GPUs, except the one asking now.
        active = status.get("phase") in (Phase.PENDING, Phase.RUNNING) and status.get("jobName")
        if active and key != (namespace, name):
            reserved += spec.resources.gpus
        elif not spec.suspend:
            waiting.append(Waiting(key, spec.priority, meta["creationTimestamp"], spec.resources.gpus))
    foreign_pods = kube.list_pods(None, f"!{LABEL_TRAININGRUN}")
    decision = plan(waiting, free_gpus(kube.list_nodes(), foreign_pods, reserved))
    metrics.QUEUE_LENGTH.set(len(decision.positions))
    key = (namespace, name)
    return Admission(admitted=key in decision.admitted, position=decision.positions.get(key))


def reconcile(namespace: str, name: str) -> Decision | None:
    """Bring one run one step closer to its spec. Safe to call any number of times."""
    started = time.monotonic()
    with _run_locks[(namespace, name)]:
        _last_reconciled[(namespace, name)] = time.monotonic()
        try:
            return _reconcile_locked(namespace, name)
        except Exception:
            metrics.RECONCILE_ERRORS.labels("TrainingRun").inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.labels("TrainingRun").observe(time.monotonic() - started)


def _reconcile_locked(namespace: str, name: str) -> Decision | None:
    run = kube.get_resource(PLURAL, namespace, name)
    if run is None or run["metadata"].get("deletionTimestamp"):
        return None
    spec = TrainingRunSpec.model_validate(run["spec"])
    status = run.get("status") or {}
    if status.get("rejectedGeneration") == run["metadata"].get("generation"):
        return None  # refused by the API server; nothing changes until the spec does
    attempts = int(status.get("attempts") or 0)
    job = kube.read_job(namespace, job_name(name, attempts)) if attempts else None
    pods = kube.list_pods(namespace, f"job-name={job_name(name, attempts)}") if job else []

    if needs_admission(spec, status, job):
        with _admission_lock:
            decision = decide(
                run["metadata"], spec, status, job, pods, _now(), CONFIG.training_image, _admission(namespace, name)
            )
            _apply(run, spec, decision)
    else:
        decision = decide(run["metadata"], spec, status, job, pods, _now(), CONFIG.training_image)
        _apply(run, spec, decision)
    if decision.frees_gpus:
        threading.Thread(target=wake_queue, name="wake-queue", daemon=True).start()
    return decision


def _apply(run: dict[str, Any], spec: TrainingRunSpec, decision: Decision) -> None:
    meta = run["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = run.get("status") or {}
    if decision.create_attempt is not None:
        image = status.get("image") or decision.status.get("image") or CONFIG.training_image
        job = build_job(meta, spec, decision.create_attempt, image, CONFIG, decision.job_deadline_seconds)
        try:
            for obj in [*build_trainer_identity(meta), job]:
                created = kube.create(obj)
        except ApiException as error:
            if error.status not in (400, 422):
                raise
            _refused(run, obj["kind"], error)
            return
        if created:
            metrics.ATTEMPTS.inc()
        if status.get("rejectedGeneration") is not None:
            decision.status["rejectedGeneration"] = None  # the changed spec went through
    for job_to_delete in decision.delete_jobs:
        kube.delete_job(namespace, job_to_delete)
    if decision.delete_all_jobs:
        kube.delete_jobs(namespace, f"{LABEL_TRAININGRUN}={name}")
    if decision.status:
        kube.patch_status(PLURAL, namespace, name, decision.status)
    for reason in decision.failed_attempts:
        metrics.FAILURES.labels(reason).inc()
    _post_events(run, decision)


def _refused(run: dict[str, Any], kind: str, error: ApiException) -> None:
    """A child the API server will never accept as built: a condition and one Event, no hot retries."""
    try:
        api_message = json.loads(error.body or "{}").get("message") or str(error.reason)
    except ValueError:
        api_message = str(error.reason)
    meta = run["metadata"]
    decision = child_rejected(meta, run.get("status") or {}, kind, api_message, _now())
    kube.patch_status(PLURAL, meta["namespace"], meta["name"], decision.status)
    metrics.CHILD_REJECTIONS.labels("TrainingRun", kind).inc()
    _post_events(run, decision)


def wake_queue() -> None:
    """A run let go of GPUs: look at the queued runs now instead of at their next timer."""
    queued = [r for r in kube.list_managed(PLURAL) if (r.get("status") or {}).get("phase") == Phase.QUEUED]
    queued.sort(key=lambda r: (r.get("status") or {}).get("queuePosition") or 0)
    for other in queued:
        try:
            reconcile(other["metadata"]["namespace"], other["metadata"]["name"])
        except Exception:  # the timer retries; one bad run must not block the rest
            log.exception("reconcile of queued run %s failed", other["metadata"]["name"])


# --- triggers -------------------------------------------------------------------------


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def on_run_changed(namespace: str, name: str, **_: Any) -> None:
    reconcile(namespace, name)


def _due(run: dict[str, Any], now: float) -> bool:
    """Runs whose next step depends on time rather than on an event."""
    status, spec = run.get("status") or {}, run.get("spec") or {}
    key = (run["metadata"]["namespace"], run["metadata"]["name"])
    if status.get("phase") in TERMINAL:
        ttl, finished = spec.get("ttlSecondsAfterFinished"), parse_time(status.get("completionTime"))
        expired = ttl is not None and finished is not None and _now() >= finished + timedelta(seconds=ttl)
        return expired and now - _last_reconciled.get(key, 0) > TTL_CHECK_SECONDS
    waiting = status.get("phase") in (None, Phase.QUEUED) or status.get("nextAttemptAt")
    return bool(waiting) or now - _last_reconciled.get(key, 0) > SAFETY_NET_SECONDS


@resync.register
def resync_once() -> None:
    """Level-triggered safety net: queue admission, retry backoff, TTL, missed events."""
    now = time.monotonic()
    runs = kube.list_managed(PLURAL)
    phases = Counter((r.get("status") or {}).get("phase") or Phase.PENDING.value for r in runs)
    for phase in Phase:
        metrics.RUNS_BY_PHASE.labels(phase.value).set(phases.get(phase.value, 0))
    for run in runs:
        if run["metadata"].get("deletionTimestamp") or not _due(run, now):
            continue
        try:
            reconcile(run["metadata"]["namespace"], run["metadata"]["name"])
        except Exception:
            log.exception("periodic reconcile of %s failed", run["metadata"]["name"])


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_job_event(namespace: str, labels: dict[str, str], type: str | None, **_: Any) -> None:
    if type is None:  # the initial listing; the resume handler covers it
        return
    reconcile(namespace, labels[LABEL_TRAININGRUN])


@kopf.on.event("", "v1", "pods", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_pod_event(namespace: str, name: str, labels: dict[str, str], body: kopf.Body, **_: Any) -> None:
    """Count each disrupted pod once; the Job itself replaces it (podFailurePolicy Ignore)."""
    if not is_disrupted(dict(body)):
        return
    run_name = labels[LABEL_TRAININGRUN]
    with _run_locks[(namespace, run_name)]:
        run = kube.get_resource(PLURAL, namespace, run_name)
        if run is None:
            return
        counted = list((run.get("status") or {}).get("preemptedPods") or [])
        if name in counted:
            return
        counted.append(name)
        kube.patch_status(PLURAL, namespace, run_name, {"preemptedPods": counted})
        metrics.PREEMPTIONS.inc()
        kube.post_event(run, "Warning", "Preempted", f"pod {name} was disrupted; the Job replaces it")
    reconcile(namespace, run_name)
