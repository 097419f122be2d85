"""AnnotationConsumer conditions from its Deployment and the consumer's own reports (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azaion_contract.models.annotationconsumer import (
    AnnotationConsumerSpec,
    AnnotationConsumerStatus,
    ConsumerPhase,
    duration_seconds,
)
from azaion_contract.timefmt import parse_rfc3339_or_none
from azaion_contract.timefmt import rfc3339 as timestamp
from azaion_operator.kit.conditions import condition, find, find_in, keep_transition_times

#: The condition saying whether the consumer's children exist as the spec says.
RECONCILED = "Reconciled"


@dataclass
class Health:
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ChildProblem:
    """Why the children could not be made: ``ChildRejected`` (fix the spec) or ``ClaimNotFound`` (create it)."""

    reason: str
    message: str


def reconciled(meta: dict[str, Any], status: dict[str, Any], problem: ChildProblem | None, now: datetime) -> Health:
    """The Reconciled condition after an attempt to make the children; one Event per new cause."""
    health = Health()
    generation = meta.get("generation", 1)
    if problem is None:
        reason, message = "ChildrenCreated", "the Deployment and its claim are as specified"
    else:
        reason, message = problem.reason, problem.message
    entry = condition(RECONCILED, problem is None, reason, message, timestamp(now), generation)
    previous = find(status.get("conditions"), RECONCILED) or {}
    same = all(previous.get(key) == entry[key] for key in ("status", "reason", "message", "observedGeneration"))
    if same:
        return health  # nothing new: no write, no Event
    others = [c for c in status.get("conditions") or [] if c.get("type") != RECONCILED]
    keep_transition_times([entry], status.get("conditions"))
    health.status = AnnotationConsumerStatus.patch(conditions=[*others, entry])
    if problem is not None:
        health.events.append(("Warning", problem.reason, problem.message))
    elif previous.get("status") == "False":
        health.events.append(("Normal", "ChildrenCreated", "the cause is gone: the consumer's children are created"))
    return health


def _deployment_condition(deployment: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return find_in(deployment, kind) or {}


def assess(
    meta: dict[str, Any],
    spec: AnnotationConsumerSpec,
    status: dict[str, Any],
    deployment: dict[str, Any] | None,
    now: datetime,
    pod_issue: tuple[str, str] | None = None,
) -> Health:
    """Phase and the Available, Progressing, Stalled and DiskPressure conditions.

    ``pod_issue`` is why the consumer's pod cannot start (see
    :func:`~azaion_operator.kit.pods.pod_problem`): while it is not available,
    that names the cause in the Available condition, with one Event per cause.
    """
    health = Health()
    stamp, generation = timestamp(now), meta.get("generation", 1)
    reported_status = AnnotationConsumerStatus.model_validate(status)
    # Written through the model, so a misspelt key is an error, not a silent new field.
    update: dict[str, Any] = {}

    # Offset bookkeeping: remember when the reported offset last moved.
    offset = reported_status.offset
    changed_at = parse_rfc3339_or_none(reported_status.offset_changed_at)
    if offset != reported_status.seen_offset or changed_at is None:
        update.update(seen_offset=offset, offset_changed_at=stamp)
        changed_at = now

    available = _deployment_condition(deployment, "Available")
    progressing = _deployment_condition(deployment, "Progressing")
    is_available = available.get("status") == "True"
    blocked = None if is_available else pod_issue  # the pod's cause, while it is not available

    stall_after = duration_seconds(spec.stall_after)
    reported = parse_rfc3339_or_none(reported_status.reported_at)
    waiting = reported_status.messages_waiting
    stalled, stall_message = False, "the offset advances or nothing is waiting"
    if is_available and reported is not None and (now - reported).total_seconds() > stall_after:
        stalled = True
        stall_message = f"the consumer has not reported for {int((now - reported).total_seconds())}s"
    elif waiting and (now - changed_at).total_seconds() > stall_after:
        stalled = True
        stall_message = (
            f"offset {offset} has not advanced for {int((now - changed_at).total_seconds())}s "
            f"while {waiting} messages wait"
        )

    disk = reported_status.disk_usage_percent
    pressure = disk is not None and disk >= spec.disk.warn_percent
    if pressure and disk >= spec.disk.critical_percent:
        disk_reason, disk_message = "DiskCritical", f"data volume {disk:.1f}% full: consuming paused"
    elif pressure:
        disk_reason, disk_message = "DiskAboveWarning", f"data volume {disk:.1f}% full"
    else:
        disk_reason, disk_message = "DiskOK", "" if disk is None else f"data volume {disk:.1f}% full"

    conditions = [
        condition(
            "Available",
            is_available,
            blocked[0] if blocked else available.get("reason") or "DeploymentNotAvailable",
            blocked[1] if blocked else available.get("message") or "the consumer Deployment is not available",
            stamp,
            generation,
        ),
        condition(
            "Progressing",
            progressing.get("status") == "True",
            progressing.get("reason") or "Pending",
            progressing.get("message") or "",
            stamp,
            generation,
        ),
        condition(
            "Stalled", stalled, "OffsetNotAdvancing" if stalled else "OffsetAdvancing", stall_message, stamp, generation
        ),
        condition("DiskPressure", pressure, disk_reason, disk_message, stamp, generation),
    ]
    carried = find(status.get("conditions"), RECONCILED)
    if carried is not None:
        conditions.append(carried)  # owned by the reconcile of the spec, not by this assessment
    previous = {c.get("type"): c for c in status.get("conditions") or []}
    keep_transition_times(conditions, status.get("conditions"))
    if blocked and previous.get("Available", {}).get("reason") != blocked[0]:
        health.events.append(("Warning", *blocked))
    for entry in conditions:
        flipped = previous.get(entry["type"], {}).get("status", "False") != entry["status"]
        if entry["type"] in ("Stalled", "DiskPressure") and flipped:
            event_type = "Warning" if entry["status"] == "True" else "Normal"
            reason = entry["type"] if entry["status"] == "True" else f"{entry['type']}Cleared"
            health.events.append((event_type, reason, entry["message"]))

    if not is_available:
        phase = ConsumerPhase.PENDING
    elif stalled or pressure:
        phase = ConsumerPhase.DEGRADED
    else:
        phase = ConsumerPhase.RUNNING
    update.update(phase=phase, conditions=conditions, observed_generation=generation)
    health.status = AnnotationConsumerStatus.patch(**update)
    return health


def changed(current: dict[str, Any], update: dict[str, Any]) -> bool:
    """Whether writing ``update`` would change anything but timestamps."""

    def strip(conditions: list[dict[str, Any]] | None) -> list[tuple]:
        return [(c.get("type"), c.get("status"), c.get("reason"), c.get("message")) for c in conditions or []]

    for key, value in update.items():
        if key == "conditions":
            if strip(value) != strip(current.get("conditions")):
                return True
        elif key == "offsetChangedAt":
            if current.get("seenOffset") != update.get("seenOffset") or not current.get(key):
                return True
        elif current.get(key) != value:
            return True
    return False
