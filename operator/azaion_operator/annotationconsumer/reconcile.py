"""One AnnotationConsumer reconcile: its children as specified, its health from what it reports.

Both read fresh state from the API server and are serialised per consumer,
so a replayed or missed event changes nothing.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime

from azaion_contract.models.annotationconsumer import PLURAL, AnnotationConsumerSpec, AnnotationConsumerStatus
from azaion_operator.annotationconsumer.builders import (
    build_consumer_identity,
    build_deployment,
    build_offset_claim,
    deployment_name,
    offset_claim_name,
)
from azaion_operator.annotationconsumer.health import assess, changed
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import kube

Key = tuple[str, str]

_locks: defaultdict[Key, threading.Lock] = defaultdict(threading.Lock)


def forget_except(present: Iterable[Key]) -> None:
    """Drop the locks of consumers that no longer exist (when not held)."""
    keep = set(present)
    for key in [k for k in _locks if k not in keep and not _locks[k].locked()]:
        del _locks[key]


def apply_spec(namespace: str, name: str, config: OperatorConfig) -> None:
    """The children as the spec says, serialised with the health checks."""
    with _locks[(namespace, name)]:
        _ensure_children(namespace, name, config)


def _ensure_children(namespace: str, name: str, config: OperatorConfig) -> None:
    """Offset claim (kept unless deletePolicy Delete), identity, and the Deployment as specified."""
    consumer = kube.get_resource(PLURAL, namespace, name)
    if consumer is None or consumer["metadata"].get("deletionTimestamp"):
        return
    meta = consumer["metadata"]
    spec = AnnotationConsumerSpec.model_validate(consumer["spec"])
    kube.create(build_offset_claim(meta, spec))  # an existing claim (and its offset) is reused
    for obj in build_consumer_identity(meta):
        kube.create(obj)
    kube.apply_deployment(build_deployment(meta, spec, config))
    kube.patch_status(
        PLURAL,
        namespace,
        name,
        AnnotationConsumerStatus.patch(
            deployment_name=deployment_name(name), offset_claim_name=offset_claim_name(name)
        ),
    )


def refresh_health(namespace: str, name: str) -> None:
    """Recompute phase and conditions; write (and post Events) only when something changed."""
    with _locks[(namespace, name)]:
        consumer = kube.get_resource(PLURAL, namespace, name)
        if consumer is None or consumer["metadata"].get("deletionTimestamp"):
            return
        spec = AnnotationConsumerSpec.model_validate(consumer["spec"])
        status = consumer.get("status") or {}
        deployment = kube.read_deployment(namespace, deployment_name(name))
        health = assess(consumer["metadata"], spec, status, deployment, datetime.now(UTC))
        if changed(status, health.status):
            kube.patch_status(PLURAL, namespace, name, health.status)
        for event_type, reason, message in health.events:
            kube.post_event(consumer, event_type, reason, message)
