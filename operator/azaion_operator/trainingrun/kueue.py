"""Kueue as the queue of a run's Jobs: which runs it admits, and what it did to them.

A Kueue-queued attempt's Job is created suspended with Kueue's queue label;
Kueue admits it (unsuspends it) when its ClusterQueue has quota, and may
preempt it later (suspends it again: the trainer gets SIGTERM, saves a
mid-epoch checkpoint and exits 75). The Job stays the attempt's: when Kueue
admits it again, the new pod resumes from that checkpoint. Kueue's own
count of the preemptions is on the Job's Workload, so counting them is
idempotent like everything else the operator derives from what it reads.
"""

from __future__ import annotations

from typing import Any

from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.config import OperatorConfig

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Kueue's label naming a Job's WorkloadPriorityClass.
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
#: Kueue's label on a Job's Workload: the Job's UID.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GROUP, VERSION, WORKLOADS = "kueue.x-k8s.io", "v1beta2", "workloads"


def local_queue(spec: TrainingRunSpec, config: OperatorConfig) -> str | None:
    """The LocalQueue the run's Jobs go to, or None when the built-in queue admits them."""
    if spec.queue_name:
        return spec.queue_name
    return config.kueue_queue_name if config.queueing == "kueue" else None


def preemptions(workloads: list[dict[str, Any]]) -> int:
    """How often Kueue preempted the Job of these Workloads (their eviction statistics)."""
    total = 0
    for workload in workloads:
        stats = ((workload.get("status") or {}).get("schedulingStats") or {}).get("evictions") or []
        total += sum(int(entry.get("count") or 0) for entry in stats if entry.get("reason") == "Preempted")
    return total


def suspended(job: dict[str, Any]) -> bool:
    """Whether Kueue holds the Job (not admitted yet, or preempted and waiting again)."""
    return bool((job.get("spec") or {}).get("suspend"))
