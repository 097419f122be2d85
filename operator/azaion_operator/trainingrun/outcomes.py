"""Why did it fail? Reading a training Job and its pods into an attempt outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from azaion_contract import TRAINER_CONTAINER
from azaion_operator.kit.conditions import find_in

OutcomeKind = Literal["Running", "Succeeded", "Failed", "Preempted", "PermanentError", "DeadlineExceeded"]

_EXIT_CODE_IN_MESSAGE = re.compile(r"exit code (\d+)")


@dataclass(frozen=True)
class AttemptOutcome:
    kind: OutcomeKind
    reason: str
    message: str
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.kind != "Running"


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition ``kind`` of ``obj`` when it holds."""
    found = find_in(obj, kind)
    return found if found and found.get("status") == "True" else None


def trainer_termination(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer container's last terminated state, if it terminated."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == TRAINER_CONTAINER:
            state = status.get("state") or {}
            return state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


def is_disrupted(pod: dict[str, Any]) -> bool:
    """Evicted, preempted or lost with its node: Kubernetes marks it DisruptionTarget."""
    return _condition(pod, "DisruptionTarget") is not None


def _failed_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed" and not is_disrupted(p)]
    failed.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
    return failed[-1] if failed else None


def classify(job: dict[str, Any], pods: list[dict[str, Any]]) -> AttemptOutcome:
    """The outcome of one attempt from its Job's terminal condition and its pods.

    Only the Job's ``Complete``/``Failed`` conditions end an attempt: the Job
    controller sets them after every pod has terminated, so the next attempt
    never overlaps a still-running trainer.
    """
    if _condition(job, "Complete"):
        return AttemptOutcome("Succeeded", "Completed", "the training Job completed", 0)
    failed = _condition(job, "Failed")
    if not failed:
        return AttemptOutcome("Running", "Running", "the training Job is active")

    job_reason = failed.get("reason", "")
    job_message = failed.get("message", "")
    pod = _failed_pod(pods)
    terminated = trainer_termination(pod) if pod else None
    exit_code = terminated.get("exitCode") if terminated else None
    if exit_code is None:
        match = _EXIT_CODE_IN_MESSAGE.search(job_message)
        exit_code = int(match.group(1)) if match else None
    pod_reason = (terminated or {}).get("reason") or ""

    if job_reason == "DeadlineExceeded":
        return AttemptOutcome("DeadlineExceeded", "DeadlineExceeded", f"the run exceeded its deadline: {job_message}")
    if job_reason == "PodFailurePolicy":
        return AttemptOutcome(
            "PermanentError",
            "PermanentError",
            f"the trainer exited with permanent-error code {exit_code} (bad configuration or data); see the pod's log",
            exit_code,
        )
    if pod_reason == "OOMKilled":
        return AttemptOutcome(
            "Failed", "OOMKilled", f"the trainer ran out of memory (OOMKilled, exit code {exit_code})", exit_code
        )
    if pod is None and pods and all(is_disrupted(p) for p in pods):
        return AttemptOutcome("Preempted", "Disrupted", "the training pod was disrupted")
    if exit_code is not None:
        reason = pod_reason or "Error"
        return AttemptOutcome("Failed", reason, f"the trainer failed with exit code {exit_code} ({reason})", exit_code)
    return AttemptOutcome("Failed", job_reason or "JobFailed", f"the training Job failed: {job_message}")
