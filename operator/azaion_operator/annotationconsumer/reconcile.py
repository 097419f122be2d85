"""One AnnotationConsumer reconcile: its children as specified, its health from what it reports.

Both read fresh state from the API server and are serialised per consumer,
so a replayed or missed event changes nothing.
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
from azaion_operator.annotationconsumer.health import ChildProblem, assess, changed, reconciled
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


def apply_spec(namespace: str, name: str, config: OperatorConfig) -> None:
    """The children as the spec says, serialised with the health checks."""
    with _locks[(namespace, name)]:
        _ensure_children(namespace, name, config)


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


def _ensure_children(namespace: str, name: str, config: OperatorConfig) -> None:
    """Offset claim (kept unless deletePolicy Delete), identity, and the Deployment as specified."""
    consumer = kube.get_resource(PLURAL, namespace, name)
    if consumer is None or consumer["metadata"].get("deletionTimestamp"):
        return
    meta = consumer["metadata"]
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
    health = reconciled(meta, consumer.get("status") or {}, problem, datetime.now(UTC))
    patch = dict(health.status)
    if problem is None:
        patch.update(
            AnnotationConsumerStatus.patch(
                deployment_name=deployment_name(name), offset_claim_name=offset_claim_name(name)
            )
        )
    if patch:
        kube.patch_status(PLURAL, namespace, name, patch)
    for event_type, reason, message in health.events:
        kube.post_event(consumer, event_type, reason, message)


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


def refresh_health(namespace: str, name: str) -> None:
    """Recompute phase and conditions; write (and post Events) only when something changed."""
    with _locks[(namespace, name)]:
        consumer = kube.get_resource(PLURAL, namespace, name)
        if consumer is None or consumer["metadata"].get("deletionTimestamp"):
            return
        try:
            spec = AnnotationConsumerSpec.model_validate(consumer["spec"])
        except ValidationError:  # the Reconciled condition says why; there is no health to assess
            return
        status = consumer.get("status") or {}
        deployment = kube.read_deployment(namespace, deployment_name(name))
        available = (find_in(deployment, "Available") or {}).get("status") == "True"
        # Only while it is not available: the pods say why (scheduling, image, a missing Secret).
        pods = (
            [] if deployment is None or available else kube.list_pods(namespace, f"{LABEL_ANNOTATIONCONSUMER}={name}")
        )
        health = assess(consumer["metadata"], spec, status, deployment, datetime.now(UTC), pod_problem(pods))
        if changed(status, health.status):
            kube.patch_status(PLURAL, namespace, name, health.status)
        for event_type, reason, message in health.events:
            kube.post_event(consumer, event_type, reason, message)
