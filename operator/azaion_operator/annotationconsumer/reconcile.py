"""One AnnotationConsumer reconcile: its children as specified, its health from what it reports.

A reconcile reads fresh state from the API server, is serialised per
consumer and writes its status once, so a replayed or missed event changes
nothing and no reader sees half of one.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import ValidationError

from azaion_contract import LABEL_ANNOTATIONCONSUMER
from azaion_contract.models.annotationconsumer import KIND, PLURAL, AnnotationConsumerSpec, AnnotationConsumerStatus
from azaion_operator import metrics
from azaion_operator.annotationconsumer.builders import (
    build_consumer_identity,
    build_deployment,
    build_offset_claim,
    deployment_name,
    offset_claim_name,
)
from azaion_operator.annotationconsumer.health import ChildProblem, Health, assess, changed, reconciled
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import kube
from azaion_operator.kit.apiclient import ApiError
from azaion_operator.kit.conditions import find_in, invalid_spec_message
from azaion_operator.kit.pods import pod_problem

Key = tuple[str, str]

_locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)
#: Consumers whose children could not be made: (monotonic time of the next try, current delay).
_retries: dict[Key, tuple[float, float]] = {}
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 5.0, 60.0


def forget_except(present: Iterable[Key]) -> None:
    """Drop the locks of consumers that no longer exist (when not held)."""
    keep = set(present)
    for key in [k for k in _locks if k not in keep and not _locks[k].locked()]:
        del _locks[key]
    for key in [k for k in _retries if k not in keep]:
        del _retries[key]


def reconcile(namespace: str, name: str, config: OperatorConfig) -> None:
    """The children as the spec says, then phase and conditions from what they report, in one
    status write: a reader never sees the Reconciled condition of one reconcile beside the
    phase of another."""
    _reconcile(namespace, name, config)


def refresh_health(namespace: str, name: str) -> None:
    """Phase and conditions only (the children stay as they are)."""
    _reconcile(namespace, name, None)


def _reconcile(namespace: str, name: str, config: OperatorConfig | None) -> None:
    """Serialised per consumer; writes (and posts Events) only when something changed."""
    with _locks[(namespace, name)]:
        consumer = kube.get_resource(PLURAL, namespace, name)
        if consumer is None or consumer["metadata"].get("deletionTimestamp"):
            return
        patch, events = _ensure_children(consumer, config) if config is not None else ({}, [])
        # The status as the write will leave it: health is assessed on top of the children's part.
        status = {**(consumer.get("status") or {}), **patch}
        health = _health(consumer, status)
        if health is not None:
            if changed(status, health.status):
                patch.update(health.status)
            events += health.events
        if patch:
            kube.patch_status(PLURAL, namespace, name, patch)
        for event_type, reason, message in events:
            kube.post_event(consumer, event_type, reason, message)


def retry_due(namespace: str, name: str, now: float | None = None) -> bool:
    """Whether a consumer whose children could not be made should be tried again now."""
    due, _ = _retries.get((namespace, name), (0.0, 0.0))
    return (time.monotonic() if now is None else now) >= due


def _schedule_retry(key: Key, problem: ChildProblem | None) -> None:
    """Bounded exponential backoff while stuck (a few API calls a minute); none once through."""
    if problem is None:
        _retries.pop(key, None)
        return
    _, delay = _retries.get(key, (0.0, 0.0))
    delay = min(RETRY_MAX_SECONDS, max(RETRY_FIRST_SECONDS, delay * 2))
    _retries[key] = (time.monotonic() + delay, delay)


def _ensure_children(consumer: dict, config: OperatorConfig) -> tuple[dict, list[tuple[str, str, str]]]:
    """Offset claim (kept unless deletePolicy Delete), identity, and the Deployment as specified;
    the status patch and Events that say how that went."""
    meta = consumer["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        spec = AnnotationConsumerSpec.model_validate(consumer["spec"])
    except ValidationError as error:  # stored before a stricter model: a condition, not a retry loop
        problem: ChildProblem | None = ChildProblem(
            "InvalidSpec",
            f"the stored spec does not satisfy this operator's AnnotationConsumer model; fix it: "
            f"{invalid_spec_message(error)}",
        )
    else:
        problem = _missing_data_claim(namespace, spec) or _create_children(meta, spec, config)
    _schedule_retry((namespace, name), problem)
    if problem is not None:
        metrics.RECONCILE_BLOCKED.labels(KIND, problem.reason).inc()
    outcome = reconciled(meta, consumer.get("status") or {}, problem, datetime.now(UTC))
    patch = dict(outcome.status)
    if problem is None:
        patch.update(
            AnnotationConsumerStatus.patch(
                deployment_name=deployment_name(name), offset_claim_name=offset_claim_name(name)
            )
        )
    return patch, list(outcome.events)


def _missing_data_claim(namespace: str, spec: AnnotationConsumerSpec) -> ChildProblem | None:
    """The data volume is the user's claim: without it the pod would wait unscheduled, silently."""
    claim = spec.data_volume.claim_name
    if kube.claim_exists(namespace, claim):
        return None
    return ChildProblem(
        "ClaimNotFound",
        f"spec.dataVolume.claimName: PersistentVolumeClaim {claim!r} does not exist in namespace {namespace!r}; "
        "the consumer starts by itself once it does",
    )


def _create_children(meta: dict, spec: AnnotationConsumerSpec, config: OperatorConfig) -> ChildProblem | None:
    """Create what is missing and apply the Deployment; a refusal becomes a problem, never a hot retry."""
    children = [build_offset_claim(meta, spec), *build_consumer_identity(meta)]
    deployment = build_deployment(meta, spec, config)
    current = children[0]
    try:
        for current in children:
            kube.create(current)  # an existing claim (and its offset) is reused
        current = deployment
        kube.apply_deployment(deployment)
    except ApiError as error:
        # 400/422: the object as built is invalid; 403: a policy (quota, admission) forbids it.
        if error.status not in (400, 403, 422):
            raise
        metrics.CHILD_REJECTIONS.labels(KIND, current["kind"]).inc()
        return ChildProblem(
            "ChildRejected",
            f"the API server refused the consumer's {current['kind']} {current['metadata']['name']!r}: "
            f"{kube.api_message(error)}",
        )
    return None


def _health(consumer: dict, status: dict) -> Health | None:
    """Phase and conditions from the Deployment (and, while it is not available, its pods);
    None when the spec does not validate (the Reconciled condition says why)."""
    meta = consumer["metadata"]
    try:
        spec = AnnotationConsumerSpec.model_validate(consumer["spec"])
    except ValidationError:
        return None
    deployment = kube.read_deployment(meta["namespace"], deployment_name(meta["name"]))
    available = (find_in(deployment, "Available") or {}).get("status") == "True"
    # Only while it is not available: the pods say why (scheduling, image, a missing Secret).
    pods = (
        []
        if deployment is None or available
        else kube.list_pods(meta["namespace"], f"{LABEL_ANNOTATIONCONSUMER}={meta['name']}")
    )
    return assess(meta, spec, status, deployment, datetime.now(UTC), pod_problem(pods))
