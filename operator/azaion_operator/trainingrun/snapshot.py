"""What the GPU queue decides on, listed rarely however many runs ask.

Admission needs every run, the nodes and other workloads' GPU pods. Listing
them on every admission made a burst of N runs cost N cluster-wide lists
each (quadratic in N). The queue reads one :class:`QueueSnapshot` instead.
Nodes and foreign pods are listed again when older than
:data:`MAX_AGE_SECONDS` (the operator hears no events of theirs). Runs are
kept current by the watch and listed again only every
:data:`RUNS_MAX_AGE_SECONDS`, a safety net for a missed event: a listing of
a thousand runs takes longer than a second on a busy API server, and would
otherwise be redone by nearly every admission. Between listings the runs
follow what the operator hears and does: every TrainingRun event as the
watch delivers it (:meth:`QueueSnapshot.heard`, so runs join the line in the
order the API server reports them, before any of them is reconciled), and
the admissions' own reads and status writes (:meth:`QueueSnapshot.saw`, so a
run admitted a moment ago is never seen as still waiting). Of two versions
of a run the later one is kept.

Admissions read it under the admission lock; events arrive from kopf's event
loop, so the runs are guarded by a lock of their own, held only for dict
operations. A spec is parsed once per ``(uid, generation)``, and only its
queue terms are kept: status writes and the trainer's progress reports
change neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azaion_operator.kit.kube import without_managed_fields
from azaion_operator.trainingrun.queue import NOWHERE, Place, QueueTerms, Waiting, parse_terms, place_of

#: How stale the listing of nodes and foreign GPU pods may be (seconds).
MAX_AGE_SECONDS = 1.0
#: How stale the listing under the runs may be; watch events keep them current meanwhile.
RUNS_MAX_AGE_SECONDS = 60.0

Key = tuple[str, str]
Lister = Callable[[], list[dict[str, Any]]]


@dataclass
class QueueSnapshot:
    list_runs: Lister
    list_nodes: Lister
    list_foreign_pods: Lister
    max_age: float = MAX_AGE_SECONDS
    runs_max_age: float = RUNS_MAX_AGE_SECONDS
    clock: Callable[[], float] = time.monotonic
    _runs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: What was heard since the listing under way began: (the run, whether it was deleted).
    _heard: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _nodes: list[dict[str, Any]] = field(default_factory=list)
    _pods: list[dict[str, Any]] = field(default_factory=list)
    _taken: float | None = None
    _runs_taken: float | None = None
    _terms: dict[tuple[str, int], QueueTerms | None] = field(default_factory=dict)
    #: Each run's place in the queue, kept as runs change (a plan then costs a sort, not a
    #: pass over every run): the places, the runs in line, and the GPUs held in all.
    _places: dict[Key, Place] = field(default_factory=dict)
    _in_line: dict[Key, Waiting] = field(default_factory=dict)
    _held: int = 0

    def _fresh(self) -> None:
        if self._runs_taken is None or self.clock() - self._runs_taken >= self.runs_max_age:
            self._list_runs()
        if self._taken is None or self.clock() - self._taken >= self.max_age:
            self._nodes, self._pods = self.list_nodes(), self.list_foreign_pods()
            self._taken = self.clock()

    def _list_runs(self) -> None:
        with self._lock:
            self._heard = []
        listed = {_key(run): without_managed_fields(run) for run in self.list_runs()}
        for run in listed.values():
            self.terms(run)
        with self._lock:
            for run, deleted in self._heard:  # heard while the listing was under way
                _merge(listed, run, deleted)
            self._runs, self._heard = listed, []
            self._places, self._in_line, self._held = {}, {}, 0
            for key, run in listed.items():
                self._place(key, run)
        self._runs_taken = self.clock()
        live = {(r["metadata"].get("uid", ""), r["metadata"].get("generation", 0)) for r in listed.values()}
        for stale in [k for k in self._terms if k not in live]:
            del self._terms[stale]

    def runs(self, relist: bool = True) -> list[dict[str, Any]]:
        """Every run as last heard or listed; listed again first when the listing is stale, unless not ``relist``."""
        if relist:
            self._fresh()
        with self._lock:
            return list(self._runs.values())

    def run(self, key: Key) -> dict[str, Any] | None:
        """One run as last heard or listed (no listing of its own)."""
        with self._lock:
            return self._runs.get(key)

    def nodes(self) -> list[dict[str, Any]]:
        self._fresh()
        return self._nodes

    def foreign_pods(self) -> list[dict[str, Any]]:
        self._fresh()
        return self._pods

    def heard(self, run: dict[str, Any], deleted: bool = False) -> None:
        """A run as a watch event delivered it (never lists; safe from the event loop)."""
        key, run = _key(run), without_managed_fields(run)
        self.terms(run)  # parsed (once per generation) before the lock, which admissions wait on
        with self._lock:
            _merge(self._runs, run, deleted)
            self._heard.append((run, deleted))
            self._place(key, self._runs.get(key))

    def line(self, asking: Key | None) -> tuple[list[Waiting], int]:
        """The runs in line for GPUs and the GPUs the others hold, as :func:`~.queue.line_up`
        gives them for every run, without a pass over every run."""
        self._fresh()
        with self._lock:
            waiting, held = list(self._in_line.values()), self._held
            place = self._places.get(asking, NOWHERE) if asking is not None else NOWHERE
        if place.holds:  # the run asking does not count against itself
            held -= place.holds
            if place.entry is not None:
                waiting.append(place.entry)
        return waiting, held

    def _place(self, key: Key, run: dict[str, Any] | None) -> None:
        """Put the run's new place in the index (the caller holds the lock)."""
        old = self._places.pop(key, NOWHERE)
        self._held -= old.holds
        self._in_line.pop(key, None)
        place = NOWHERE if run is None else place_of(run, self.terms(run))
        if place == NOWHERE:
            return
        self._places[key] = place
        self._held += place.holds
        if not place.holds and place.entry is not None:
            self._in_line[key] = place.entry

    def saw(self, run: dict[str, Any]) -> None:
        """A run as the API server just returned it to an admission (read or status write)."""
        self._fresh()
        self.heard(run)

    def terms(self, run: dict[str, Any]) -> QueueTerms | None:
        """The run's queue terms; None when its spec does not validate (such a run neither waits nor holds)."""
        meta = run["metadata"]
        key = (meta.get("uid", ""), meta.get("generation", 0))
        if key not in self._terms:
            self._terms[key] = parse_terms(run)
        return self._terms[key]


def _merge(runs: dict[Key, dict[str, Any]], run: dict[str, Any], deleted: bool) -> None:
    """Put ``run`` (or its deletion) into ``runs`` unless ``runs`` holds a later version."""
    held = runs.get(_key(run))
    if held is not None and _older(run, held):
        return
    if deleted:
        runs.pop(_key(run), None)
    else:
        runs[_key(run)] = run


def _older(run: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether ``run`` is an earlier version of ``than``. Resource versions are
    opaque to clients, but the API server's are etcd revisions; anything else
    counts as newer."""
    mine, theirs = run["metadata"].get("resourceVersion", ""), than["metadata"].get("resourceVersion", "")
    return mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs)


def _key(run: dict[str, Any]) -> Key:
    return run["metadata"]["namespace"], run["metadata"]["name"]
