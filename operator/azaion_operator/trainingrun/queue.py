"""Admission of GPU runs: who may start now, and everyone else's place in line.

Runs wait as ``Queued`` TrainingRuns instead of as Pending pods, so the queue
is visible (``kubectl get tr``), ordered (priority, then first come first
served) and never fragments the GPUs of a single box.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from azaion_contract.models.trainingrun import Phase, TrainingRunSpec

Key = tuple[str, str]  # (namespace, name)
_FINISHED = {Phase.SUCCEEDED.value, Phase.FAILED.value}


@dataclass(frozen=True)
class Waiting:
    key: Key
    priority: int
    created: str  # RFC 3339; sorts chronologically
    gpus: int
    #: Where it stands in line: priority first, then arrival (a tie broken by name).
    rank: tuple[int, str, Key] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", (-self.priority, self.created, self.key))


@dataclass(frozen=True)
class Place:
    """What one run is to the GPU queue: in line (``entry``), holding GPUs (``holds``), or neither.

    A run that holds GPUs keeps its ``entry`` too: when it asks for admission
    again (its Job was lost), it waits in line instead of counting against itself.
    """

    entry: Waiting | None = None
    holds: int = 0


NOWHERE = Place()


@dataclass(frozen=True)
class Plan:
    admitted: list[Key]
    positions: dict[Key, int]


def plan(waiting: Iterable[Waiting], free_gpus: int) -> Plan:
    """Admit in order while the head of the line fits; nobody overtakes a waiting run.

    Strict order (no backfill) means a large run is never starved by a stream
    of small ones; the price is an idle GPU while the head waits for two.
    """
    line = sorted(waiting, key=attrgetter("rank"))
    admitted: list[Key] = []
    positions: dict[Key, int] = {}
    blocked = False
    for entry in line:
        if not blocked and entry.gpus <= free_gpus:
            admitted.append(entry.key)
            free_gpus -= entry.gpus
        else:
            blocked = True
            positions[entry.key] = len(positions) + 1
    return Plan(admitted=admitted, positions=positions)


@dataclass(frozen=True)
class QueueTerms:
    """What the queue needs of a run's spec: a thousand of these are kept, not parsed specs."""

    gpus: int
    priority: int
    suspend: bool
    #: Named a LocalQueue: Kueue admits it, the built-in queue never does.
    kueue: bool

    @classmethod
    def of(cls, spec: TrainingRunSpec) -> QueueTerms:
        return cls(spec.resources.gpus, spec.priority, spec.suspend, bool(spec.queue_name))


def parse_terms(run: dict[str, Any]) -> QueueTerms | None:
    """The run's queue terms; None when its spec does not validate."""
    try:
        return QueueTerms.of(TrainingRunSpec.model_validate(run["spec"]))
    except ValueError:
        return None


def place_of(run: dict[str, Any], terms: QueueTerms | None) -> Place:
    """Where ``run`` (with its queue ``terms``; None when its spec does not validate) stands.

    A run with an attempt under way (or between attempts, in retry backoff)
    holds its GPUs. Suspended and finished runs neither wait nor hold; CPU
    runs never enter the queue; neither does a run whose spec does not
    validate, nor one that Kueue admits.
    """
    meta, status = run["metadata"], run.get("status") or {}
    if meta.get("deletionTimestamp") or terms is None or terms.gpus == 0:
        return NOWHERE
    if status.get("phase") in _FINISHED:
        return NOWHERE
    gpus = terms.gpus
    entry = None
    if not terms.suspend and not terms.kueue:
        entry = Waiting((meta["namespace"], meta["name"]), terms.priority, meta["creationTimestamp"], gpus)
    active = status.get("phase") in (Phase.PENDING, Phase.RUNNING) and status.get("jobName")
    return Place(entry, gpus if active else 0)


def line_up(
    runs: Iterable[dict[str, Any]],
    asking: Key | None,
    terms_of: Callable[[dict[str, Any]], QueueTerms | None] = parse_terms,
) -> tuple[list[Waiting], int]:
    """The GPU runs waiting for admission, and the GPUs the others hold (see :func:`place_of`);
    the run asking now does not count against itself."""
    waiting: list[Waiting] = []
    reserved = 0
    for run in runs:
        place = place_of(run, terms_of(run))
        key = (run["metadata"]["namespace"], run["metadata"]["name"])
        if place.holds and key != asking:
            reserved += place.holds
        elif place.entry is not None:
            waiting.append(place.entry)
    return waiting, reserved


def _gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get("nvidia.com/gpu") or (resources.get("requests") or {}).get(
            "nvidia.com/gpu"
        )
        total += int(value or 0)
    return total


def free_gpus(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], reserved: int) -> int:
    """Allocatable GPUs on schedulable nodes, minus what running pods and admitted runs hold.

    ``pods`` are other workloads' pods (ours are counted through ``reserved``,
    which also covers an admitted run whose pod does not exist yet).
    """
    total = 0
    for node in nodes:
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        total += int(((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", 0))
    used = sum(
        _gpu_request(p)
        for p in pods
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and (p.get("spec") or {}).get("nodeName")
    )
    return max(0, total - used - reserved)
