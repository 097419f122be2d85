"""What the GPU queue decides on, listed at most once a second however many runs ask.

Admission needs every run, the nodes and other workloads' GPU pods. Listing
them on every admission made a burst of N runs cost N cluster-wide lists
each (quadratic in N). The queue reads one :class:`QueueSnapshot` instead:
refreshed when older than :data:`MAX_AGE_SECONDS`, and corrected at once by
the admissions' own status writes, so a run admitted a moment ago is never
seen as still waiting. Every read and write of it happens under the
admission lock, the only place admissions are decided.

A spec is parsed once per ``(uid, generation)``: status writes and the
trainer's progress reports change neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azaion_contract.models.trainingrun import TrainingRunSpec

#: How stale the runs, nodes and pods the queue decides on may be (seconds).
MAX_AGE_SECONDS = 1.0

Key = tuple[str, str]
Lister = Callable[[], list[dict[str, Any]]]


@dataclass
class QueueSnapshot:
    list_runs: Lister
    list_nodes: Lister
    list_foreign_pods: Lister
    max_age: float = MAX_AGE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _runs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _nodes: list[dict[str, Any]] = field(default_factory=list)
    _pods: list[dict[str, Any]] = field(default_factory=list)
    _taken: float | None = None
    _specs: dict[tuple[str, int], TrainingRunSpec | None] = field(default_factory=dict)

    def _fresh(self) -> None:
        if self._taken is not None and self.clock() - self._taken < self.max_age:
            return
        self._runs = {_key(run): run for run in self.list_runs()}
        self._nodes = self.list_nodes()
        self._pods = self.list_foreign_pods()
        self._taken = self.clock()
        live = {(r["metadata"].get("uid", ""), r["metadata"].get("generation", 0)) for r in self._runs.values()}
        for stale in [k for k in self._specs if k not in live]:
            del self._specs[stale]

    def runs(self) -> list[dict[str, Any]]:
        self._fresh()
        return list(self._runs.values())

    def nodes(self) -> list[dict[str, Any]]:
        self._fresh()
        return self._nodes

    def foreign_pods(self) -> list[dict[str, Any]]:
        self._fresh()
        return self._pods

    def saw(self, run: dict[str, Any]) -> None:
        """A run as the API server just returned it (read, or written under the admission lock).

        Kept unless the snapshot already holds a later version of it: a run created
        after the last listing is in line at once, and a run admitted a moment ago
        is never seen as waiting.
        """
        self._fresh()
        held = self._runs.get(_key(run))
        if held is None or not _older(run, held):
            self._runs[_key(run)] = run

    def spec(self, run: dict[str, Any]) -> TrainingRunSpec | None:
        """The run's parsed spec; None when it does not validate (such a run neither waits nor holds)."""
        meta = run["metadata"]
        key = (meta.get("uid", ""), meta.get("generation", 0))
        if key not in self._specs:
            try:
                self._specs[key] = TrainingRunSpec.model_validate(run["spec"])
            except ValueError:
                self._specs[key] = None
        return self._specs[key]


def _older(run: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``run`` is an earlier version of ``than``. Resource versions are
    opaque to clients, but the API server's are etcd revisions; anything else
    counts as newer."""
    mine, theirs = run["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    return mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)


def _key(run: dict[str, Any]) -> Key:
    return run["metadata"]["namespace"], run["metadata"]["name"]
