"""kopf triggers for AnnotationConsumers: children on spec changes, health on events and the resync loop."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import kopf

from azaion_contract import API_GROUP, API_VERSION, LABEL_ANNOTATIONCONSUMER
from azaion_contract.models.annotationconsumer import PLURAL
from azaion_operator import metrics, resync
from azaion_operator.annotationconsumer import reconcile as controller
from azaion_operator.annotationconsumer.health import RECONCILED
from azaion_operator.config import OperatorConfig
from azaion_operator.kit import kube
from azaion_operator.kit.conditions import find

log = logging.getLogger(__name__)


@resync.register
def resync_once(config: OperatorConfig) -> None:
    """Health of every consumer (Stalled and DiskPressure depend on time); children retried while blocked."""
    phases: dict[str, int] = defaultdict(int)
    consumers = kube.list_managed(PLURAL)
    controller.forget_except((c["metadata"]["namespace"], c["metadata"]["name"]) for c in consumers)
    for consumer in consumers:
        meta = consumer["metadata"]
        status = consumer.get("status") or {}
        phases[status.get("phase") or "Pending"] += 1
        try:
            blocked = (find(status.get("conditions"), RECONCILED) or {}).get("status") == "False"
            # Children again only while blocked and due (the cause may be gone); health always.
            if blocked and controller.retry_due(meta["namespace"], meta["name"]):
                controller.reconcile(meta["namespace"], meta["name"], config)
            else:
                controller.refresh_health(meta["namespace"], meta["name"])
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
        controller.reconcile(namespace, name, memo.config)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_ANNOTATIONCONSUMER: kopf.PRESENT})
def on_deployment_event(namespace: str, labels: dict[str, str], type: str | None, **_: Any) -> None:
    if type is None:
        return
    controller.refresh_health(namespace, labels[LABEL_ANNOTATIONCONSUMER])
