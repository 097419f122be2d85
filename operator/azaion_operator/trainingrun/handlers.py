"""kopf triggers for TrainingRuns: each only says which run to look at; :mod:`.reconcile` does the rest."""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import REGISTRY

from azaion_contract import API_GROUP, API_VERSION, LABEL_TRAININGRUN
from azaion_contract.models.trainingrun import PLURAL, Phase, TrainingRunSpec
from azaion_contract.timefmt import now, parse_rfc3339_or_none
from azaion_operator import metrics, resync
from azaion_operator.config import OperatorConfig
from azaion_operator.trainingrun import reconcile as controller
from azaion_operator.trainingrun.lifecycle import TERMINAL, simply_waiting, tracking_stale, ttl_expired
from azaion_operator.trainingrun.outcomes import is_disrupted
from azaion_operator.trainingrun.runmetrics import RunCollector

log = logging.getLogger(__name__)

REGISTRY.register(RunCollector(lambda: controller.current_runs(relist=False)))

#: A run nothing happened to is looked at again after this long (missed events).
SAFETY_NET_SECONDS = 60.0
#: A finished run past its TTL is retried this often until its Jobs are gone.
TTL_CHECK_SECONDS = 10.0
#: A run changed this recently has its event still on the way to kopf's handler
#: (in a burst, behind hundreds of others): the resync leaves it to that.
EVENT_GRACE_SECONDS = 10.0


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def queue_hears_run(type: str | None, event: dict[str, Any], **_: Any) -> None:
    """Before anything is reconciled, in kopf's event loop: runs join the GPU queue in
    the order the API server reports them, so none is overtaken by a later one."""
    controller.heard(type, event["object"])


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
def on_run_event(namespace: str, name: str, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A run appeared (or was listed at start-up) or its spec changed.

    An event handler rather than kopf's create/update/resume handlers: those
    keep their progress and the last handled spec in annotations, two more
    writes to every run on every change, while :func:`reconcile` needs no
    memory of earlier calls. Status writes (ours, and the trainer's progress
    reports) leave the generation as it was and are skipped here, as is a run
    the resync got to first; a reconcile that failed leaves its generation
    unhandled, and the resync retries it. A trainer's MLflow report that the
    Tracking condition does not show yet is the one status write reconciled.
    """
    if type == "DELETED":
        return
    handled = controller.handled_generation.get((namespace, name)) == body.metadata.get("generation")
    if handled and not tracking_stale(dict(body.get("status") or {})):
        return
    controller.reconcile(namespace, name, memo.config)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_job_event(namespace: str, labels: dict[str, str], type: str | None, memo: kopf.Memo, **_: Any) -> None:
    # The initial listing: the runs' own listing covers it. A Job just created:
    # it has no status yet, and the run already says its attempt started.
    if type in (None, "ADDED"):
        return
    _follow_ups.submit(_follow_up, namespace, labels[LABEL_TRAININGRUN], memo.config)


@kopf.on.event("", "v1", "pods", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_pod_event(namespace: str, name: str, labels: dict[str, str], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if is_disrupted(dict(body)) and controller.record_disruption(namespace, labels[LABEL_TRAININGRUN], name):
        _follow_ups.submit(_follow_up, namespace, labels[LABEL_TRAININGRUN], memo.config)


#: Reconciles prompted by a run's Job or pods, in threads of their own: a burst
#: of new runs (kopf's workers) never waits behind the follow-ups of the runs
#: created before them.
_follow_ups = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trainingrun-follow-up")


def _follow_up(namespace: str, name: str, config: OperatorConfig) -> None:
    try:
        controller.reconcile(namespace, name, config)
    except Exception:  # the resync's safety net looks at the run again
        log.exception("reconcile of %s after an event of its Job or pods failed", name)


def _due(run: dict[str, Any], monotonic_now: float) -> bool:
    """Runs whose next step depends on time rather than on an event (queued runs: see resync_once)."""
    meta, status = run["metadata"], run.get("status") or {}
    key = (meta["namespace"], meta["name"])
    since = monotonic_now - controller.last_reconciled.get(key, 0)
    if status.get("phase") in TERMINAL:
        try:
            spec = TrainingRunSpec.model_validate(run["spec"])
        except ValueError:
            return False
        return ttl_expired(spec, status, now()) and since > TTL_CHECK_SECONDS
    if controller.handled_generation.get(key) != meta.get("generation"):
        # Never reconciled to the end at this spec: a failed reconcile, or an event still queued.
        return monotonic_now - controller.heard_at.get(key, 0.0) > EVENT_GRACE_SECONDS
    retry_at = parse_rfc3339_or_none(status.get("nextAttemptAt"))
    if retry_at is not None and retry_at <= now():
        return True
    if status.get("phase") == Phase.QUEUED:
        # The built-in queue's runs move by its plan; Kueue's are looked at every time.
        return not simply_waiting(meta, status)
    return since > SAFETY_NET_SECONDS


@resync.register
def resync_once(config: OperatorConfig) -> None:
    """Level-triggered safety net: queue admission, retry backoff, TTL, missed events."""
    monotonic_now = time.monotonic()
    # The watch keeps these current (and a listing once a minute catches a missed event):
    # listing every run on every resync would be the largest call the operator makes.
    runs = controller.current_runs()
    phases = Counter((r.get("status") or {}).get("phase") or Phase.PENDING.value for r in runs)
    for phase in Phase:
        metrics.RUNS_BY_PHASE.labels(phase.value).set(phases.get(phase.value, 0))
    controller.forget_except((r["metadata"]["namespace"], r["metadata"]["name"]) for r in runs)
    due = [
        (run["metadata"]["namespace"], run["metadata"]["name"])
        for run in runs
        if not run["metadata"].get("deletionTimestamp") and _due(run, monotonic_now)
    ]
    # The queued runs: one plan of the whole queue says which start and whose place changed.
    moves = controller.queue_moves()
    for namespace, name in dict.fromkeys([*due, *moves.reconcile]):
        try:
            controller.reconcile(namespace, name, config)
        except Exception:
            log.exception("periodic reconcile of %s failed", name)
    controller.show_places({key: place for key, place in moves.places.items() if key not in due})
