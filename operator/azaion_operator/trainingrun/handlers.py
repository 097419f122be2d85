"""kopf triggers for TrainingRuns: each only says which run to look at; :mod:`.reconcile` does the rest."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import kopf

from azaion_contract import API_GROUP, API_VERSION, LABEL_TRAININGRUN
from azaion_contract.models.trainingrun import PLURAL, Phase, TrainingRunSpec
from azaion_contract.timefmt import now
from azaion_operator import metrics, resync
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import kube
from azaion_operator.trainingrun import reconcile as controller
from azaion_operator.trainingrun.lifecycle import TERMINAL, ttl_expired
from azaion_operator.trainingrun.outcomes import is_disrupted

log = logging.getLogger(__name__)

#: A run nothing happened to is looked at again after this long (missed events).
SAFETY_NET_SECONDS = 60.0
#: A finished run past its TTL is retried this often until its Jobs are gone.
TTL_CHECK_SECONDS = 10.0


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def on_run_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    controller.reconcile(namespace, name, memo.config)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_job_event(namespace: str, labels: dict[str, str], type: str | None, memo: kopf.Memo, **_: Any) -> None:
    if type is None:  # the initial listing; the resume handler covers it
        return
    controller.reconcile(namespace, labels[LABEL_TRAININGRUN], memo.config)


@kopf.on.event("", "v1", "pods", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def on_pod_event(namespace: str, name: str, labels: dict[str, str], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if is_disrupted(dict(body)) and controller.record_disruption(namespace, labels[LABEL_TRAININGRUN], name):
        controller.reconcile(namespace, labels[LABEL_TRAININGRUN], memo.config)


def _due(run: dict[str, Any], monotonic_now: float) -> bool:
    """Runs whose next step depends on time rather than on an event."""
    status = run.get("status") or {}
    key = (run["metadata"]["namespace"], run["metadata"]["name"])
    since = monotonic_now - controller.last_reconciled.get(key, 0)
    if status.get("phase") in TERMINAL:
        try:
            spec = TrainingRunSpec.model_validate(run["spec"])
        except ValueError:
            return False
        return ttl_expired(spec, status, now()) and since > TTL_CHECK_SECONDS
    waiting = status.get("phase") in (None, Phase.QUEUED) or status.get("nextAttemptAt")
    return bool(waiting) or since > SAFETY_NET_SECONDS


@resync.register
def resync_once(config: OperatorConfig) -> None:
    """Level-triggered safety net: queue admission, retry backoff, TTL, missed events."""
    monotonic_now = time.monotonic()
    runs = kube.list_managed(PLURAL)
    phases = Counter((r.get("status") or {}).get("phase") or Phase.PENDING.value for r in runs)
    for phase in Phase:
        metrics.RUNS_BY_PHASE.labels(phase.value).set(phases.get(phase.value, 0))
    controller.forget_except((r["metadata"]["namespace"], r["metadata"]["name"]) for r in runs)
    for run in runs:
        if run["metadata"].get("deletionTimestamp") or not _due(run, monotonic_now):
            continue
        try:
            controller.reconcile(run["metadata"]["namespace"], run["metadata"]["name"], config)
        except Exception:
            log.exception("periodic reconcile of %s failed", run["metadata"]["name"])
