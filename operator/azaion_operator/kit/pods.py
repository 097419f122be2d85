"""What pods say about why they cannot start: shared by every resource whose children run pods."""

from __future__ import annotations

from typing import Any

from azaion_operator.kit.conditions import find


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why a pod cannot start yet (image pull, a missing Secret or ConfigMap, scheduling), as (reason, message)."""
    for pod in pods:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in {"ImagePullBackOff", "ErrImagePull", "InvalidImageName"}:
                return "ImagePullBackOff", f"cannot pull image {container.get('image')}: {waiting.get('message', '')}"
            if waiting.get("reason") == "CreateContainerConfigError":
                return "CreateContainerConfigError", waiting.get("message", "")
        scheduled = find(status.get("conditions"), "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return "Unschedulable", scheduled.get("message", "no node can run the pod")
    return None
