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

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.config import OperatorConfig
from azaion_operator.kit.apiclient import ApiError

log = logging.getLogger(__name__)

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: Kueue's label naming a Job's WorkloadPriorityClass.
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
#: Kueue's label on a Job's Workload: the Job's UID.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GROUP, VERSION, WORKLOADS = "kueue.x-k8s.io", "v1beta2", "workloads"
#: What the API server answers for an aggregated API it does not serve: no such group (404),
#: its APIService unavailable (503), or this operator not allowed to read it (403); its own
#: words are enough for the log.
UNSERVED = {403, 404, 503}


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


#: Kueue's visibility API (an aggregated API its controller serves when VisibilityOnDemand is on).
VISIBILITY = "/apis/visibility.kueue.x-k8s.io/v1beta2"


def pending_workloads_path(namespace: str, queue: str) -> str:
    """Where Kueue's visibility API lists the pending workloads of one LocalQueue, in order."""
    return f"{VISIBILITY}/namespaces/{namespace}/localqueues/{queue}/pendingworkloads"


def positions(summary: dict[str, Any]) -> dict[str, int]:
    """Each pending Job's place in its ClusterQueue (1 is next), by the Job's UID, from a
    PendingWorkloadsSummary. The ClusterQueue's place, not the LocalQueue's: it counts the
    other teams' workloads that Kueue admits first."""
    places: dict[str, int] = {}
    for item in summary.get("items") or []:
        for owner in (item.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("kind") == "Job" and owner.get("uid"):
                places[owner["uid"]] = int(item.get("positionInClusterQueue") or 0) + 1
    return places


@dataclass
class PendingPositions:
    """Kueue's positions per LocalQueue, read at most once per ``max_age`` seconds each.

    A reconcile of every Kueue-queued run asks for its Job's place; one read of
    the LocalQueue answers them all. A place is only shown, never acted on, so
    no answer of that API may stop a reconcile: where it is not served (Kueue
    without VisibilityOnDemand, its APIService unavailable) or fails, runs show
    no place, and it is asked again only after ``retry_after`` seconds.
    """

    fetch: Callable[[str], dict[str, Any]]
    max_age: float = 1.0
    retry_after: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _read: dict[tuple[str, str], tuple[float, dict[str, int]]] = field(default_factory=dict)
    _unserved_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, namespace: str, queue: str, job_uid: str) -> int | None:
        """The Job's place in its ClusterQueue; None when Kueue does not say (admitted, or not served)."""
        now = self.clock()
        with self._lock:
            if now < self._unserved_until:
                return None
            read = self._read.get((namespace, queue))
            if read is None or now - read[0] >= self.max_age:
                places = self._fetch(namespace, queue, now)
                if places is None:
                    return None
                read = self._read[(namespace, queue)] = (now, places)
            return read[1].get(job_uid)

    def _fetch(self, namespace: str, queue: str, now: float) -> dict[str, int] | None:
        """The LocalQueue's places; None, and none for ``retry_after`` seconds, when the API
        is not served or fails (the caller holds the lock)."""
        try:
            return positions(self.fetch(pending_workloads_path(namespace, queue)))
        except ApiError as error:
            if _unknown_local_queue(error):
                return {}  # Kueue serves, but has no such LocalQueue (yet)
            level, why = (logging.INFO, error.message()) if error.status in UNSERVED else (logging.WARNING, str(error))
        except Exception as error:  # a timeout, a broken connection: as good as unserved
            level, why = logging.WARNING, repr(error)
        log.log(level, "Kueue's visibility API gives no places in line for %.0f s: %s", self.retry_after, why)
        self._unserved_until = now + self.retry_after
        return None


def _unknown_local_queue(error: ApiError) -> bool:
    """A 404 from Kueue's visibility server itself (a LocalQueue it does not know), not the API
    server's for a group nobody serves."""
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return error.status == 404 and details.get("group") == "visibility.kueue.x-k8s.io"
