"""kopf handlers for AnnotationConsumers: children on spec changes, health on a resync loop."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import kopf

from azaion_contract import API_GROUP, API_VERSION, LABEL_ANNOTATIONCONSUMER
from azaion_contract.models.annotationconsumer import PLURAL, AnnotationConsumerSpec, AnnotationConsumerStatus
from azaion_operator import metrics, resync
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

log = logging.getLogger(__name__)

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def ensure_children(namespace: str, name: str, config: OperatorConfig) -> None:
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


@resync.register
def resync_once(config: OperatorConfig) -> None:
    """Health of every consumer: Stalled and DiskPressure depend on time."""
    phases: dict[str, int] = defaultdict(int)
    consumers = kube.list_managed(PLURAL)
    present = {(c["metadata"]["namespace"], c["metadata"]["name"]) for c in consumers}
    for key in [k for k in _locks if k not in present and not _locks[k].locked()]:
        del _locks[key]  # deleted consumers
    for consumer in consumers:
        meta = consumer["metadata"]
        phases[(consumer.get("status") or {}).get("phase") or "Pending"] += 1
        try:
            refresh_health(meta["namespace"], meta["name"])
        except Exception:
            metrics.RECONCILE_ERRORS.labels("AnnotationConsumer").inc()
            log.exception("health refresh of %s failed", meta["name"])
    for phase in ("Pending", "Running", "Degraded"):
        metrics.CONSUMERS_BY_PHASE.labels(phase).set(phases.get(phase, 0))


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
def on_consumer_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    with metrics.RECONCILE_SECONDS.labels("AnnotationConsumer").time():
        with _locks[(namespace, name)]:
            ensure_children(namespace, name, memo.config)
        refresh_health(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_ANNOTATIONCONSUMER: kopf.PRESENT})
def on_deployment_event(namespace: str, labels: dict[str, str], type: str | None, **_: Any) -> None:
    if type is None:
        return
    refresh_health(namespace, labels[LABEL_ANNOTATIONCONSUMER])
