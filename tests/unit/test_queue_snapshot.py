"""What the GPU queue decides on: listed at most once a second, corrected by its own writes."""

from __future__ import annotations

import pytest

from azaion_operator.trainingrun.lifecycle import EXACT_POSITIONS, shown_position
from azaion_operator.trainingrun.queue import free_gpus, line_up, plan
from azaion_operator.trainingrun.snapshot import QueueSnapshot

pytestmark = pytest.mark.unit


def run(name: str, phase: str | None = None, *, version: int = 1, generation: int = 1, job: str | None = None) -> dict:
    meta = {
        "name": name,
        "namespace": "ml",
        "uid": f"uid-{name}",
        "generation": generation,
        "resourceVersion": str(version),
        "creationTimestamp": f"2026-12-01T10:00:{len(name):02d}Z",
    }
    status = {"phase": phase, "jobName": job} if phase else {}
    body = {"model": "yolo26n.yaml", "storage": {"claimName": "data"}, "resources": {"gpus": 1}}
    return {"metadata": meta, "spec": body, "status": status}


NODE = {"metadata": {"name": "gpu"}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lists:
    """Counts the lists the snapshot makes; serves whatever the test puts in ``runs``."""

    def __init__(self, runs: list[dict]) -> None:
        self.runs = runs
        self.calls = 0

    def list_runs(self) -> list[dict]:
        self.calls += 1
        return list(self.runs)


def snapshot(lists: Lists, clock: Clock) -> QueueSnapshot:
    return QueueSnapshot(lists.list_runs, lambda: [NODE], lambda: [], clock=clock)


def test_many_admissions_share_one_listing_of_runs_and_the_safety_net_lists_them_again() -> None:
    lists, clock = Lists([run("a")]), Clock()
    shot = snapshot(lists, clock)
    for _ in range(50):
        assert [r["metadata"]["name"] for r in shot.runs()] == ["a"]
    assert lists.calls == 1
    lists.runs.append(run("b"))  # a run whose event the operator missed
    clock.now += 1.5
    assert [r["metadata"]["name"] for r in shot.runs()] == ["a"]  # the watch keeps runs current
    clock.now += shot.runs_max_age
    assert sorted(r["metadata"]["name"] for r in shot.runs()) == ["a", "b"]
    assert lists.calls == 2


def test_nodes_and_foreign_pods_are_listed_again_after_a_second_without_listing_runs() -> None:
    lists, clock = Lists([run("a")]), Clock()
    node_lists = [0]

    def nodes() -> list[dict]:
        node_lists[0] += 1
        return [NODE]

    shot = QueueSnapshot(lists.list_runs, nodes, lambda: [], clock=clock)
    shot.nodes()
    shot.nodes()
    clock.now += 1.5
    shot.nodes()
    shot.runs()
    assert node_lists[0] == 2 and lists.calls == 1


def test_a_run_admitted_a_moment_ago_holds_its_gpu_before_the_next_listing() -> None:
    lists, clock = Lists([run("first"), run("second-later")]), Clock()
    shot = snapshot(lists, clock)
    waiting, reserved = line_up(shot.runs(), None, shot.terms)
    assert plan(waiting, free_gpus(shot.nodes(), shot.foreign_pods(), reserved)).admitted == [("ml", "first")]

    shot.saw(run("first", "Pending", version=7, job="first-a1"))  # the admission's own status write
    shot.saw(run("first", version=3))  # an older read arriving late changes nothing
    waiting, reserved = line_up(shot.runs(), ("ml", "second-later"), shot.terms)
    decision = plan(waiting, free_gpus(shot.nodes(), shot.foreign_pods(), reserved))
    assert reserved == 1 and decision.admitted == [] and decision.positions == {("ml", "second-later"): 1}
    assert lists.calls == 1


def test_a_run_created_after_the_listing_is_in_line_once_it_asks() -> None:
    lists, clock = Lists([run("holder", "Running", job="holder-a1")]), Clock()
    shot = snapshot(lists, clock)
    shot.runs()
    shot.saw(run("newcomer"))
    waiting, reserved = line_up(shot.runs(), ("ml", "newcomer"), shot.terms)
    assert [w.key for w in waiting] == [("ml", "newcomer")] and reserved == 1


def test_a_spec_is_parsed_once_per_generation() -> None:
    lists, clock = Lists([run("a")]), Clock()
    shot = snapshot(lists, clock)
    first = shot.terms(shot.runs()[0])
    assert shot.terms(run("a", "Queued", version=9)) is first  # a status write: same generation
    changed = run("a", version=10, generation=2)
    changed["spec"]["priority"] = 5
    assert shot.terms(changed).priority == 5
    broken = run("broken")
    broken["spec"]["training"] = {"epochs": 0}
    assert shot.terms(broken) is None


@pytest.mark.parametrize(
    ("position", "shown", "expected"),
    [
        (3, None, 3),  # first time in line
        (4, 5, 4),  # near the head: exact
        (EXACT_POSITIONS + 1, EXACT_POSITIONS, EXACT_POSITIONS + 1),
        (480, 500, 500),  # 4% off: kept
        (400, 500, 500),  # 20% off: kept
        (375, 500, 375),  # 25% off: rewritten
        (9, 12, 9),  # reached the exact part of the line
    ],
)
def test_far_back_in_line_a_place_is_rewritten_once_it_is_a_quarter_off(position, shown, expected) -> None:
    assert shown_position(position, shown) == expected


def test_draining_a_thousand_queued_runs_rewrites_each_place_a_bounded_number_of_times() -> None:
    # Each admission moves every queued run one place up; count the status writes.
    queued, writes = 1000, 0
    shown = list(range(1, queued + 1))
    for admitted in range(1, queued):
        for index in range(admitted, queued):
            true_position = index - admitted + 1
            new = shown_position(true_position, shown[index])
            if new != shown[index]:
                shown[index], writes = new, writes + 1
    assert writes / queued < 25  # exact positions would be about 500 writes per run (10% off: 40)


def test_runs_heard_from_the_watch_join_the_line_in_order_before_either_is_reconciled() -> None:
    lists, clock = Lists([run("holder", "Running", job="holder-a1")]), Clock()
    shot = snapshot(lists, clock)
    shot.runs()
    shot.heard(run("early", version=5))
    shot.heard(run("late-but-asking-first", version=6))
    shot.saw(run("late-but-asking-first", version=6))
    clock.now += 0.5
    waiting, _ = line_up(shot.runs(), ("ml", "late-but-asking-first"), shot.terms)
    line = plan(waiting, free_gpus=0)
    assert line.positions == {("ml", "early"): 1, ("ml", "late-but-asking-first"): 2}


def test_what_is_heard_while_a_listing_is_under_way_is_not_lost_to_it() -> None:
    clock = Clock()
    shot: QueueSnapshot

    def slow_listing() -> list[dict]:
        # Events arrive while the list request is in flight: one newer than the
        # listing, one deletion, one older version the listing already beats.
        shot.heard(run("updated", "Pending", version=20, job="updated-a1"))
        shot.heard(run("deleted", version=21), deleted=True)
        shot.heard(run("stale", version=2))
        return [run("updated", version=10), run("deleted", version=11), run("stale", "Queued", version=12)]

    shot = QueueSnapshot(slow_listing, lambda: [NODE], lambda: [], clock=clock)
    held = {r["metadata"]["name"]: r for r in shot.runs()}
    assert sorted(held) == ["stale", "updated"]
    assert held["updated"]["status"]["phase"] == "Pending"
    assert held["stale"]["metadata"]["resourceVersion"] == "12"


def test_a_deleted_run_leaves_the_line() -> None:
    lists, clock = Lists([run("a"), run("b")]), Clock()
    shot = snapshot(lists, clock)
    shot.runs()
    shot.heard(run("a", version=3), deleted=True)
    assert [r["metadata"]["name"] for r in shot.runs()] == ["b"]


@pytest.mark.parametrize("seed", range(20))
def test_the_kept_line_is_what_a_pass_over_every_run_gives(seed: int) -> None:
    """Places kept as runs change (heard, seen, listed, deleted) match line_up over all runs."""
    import random

    rng = random.Random(seed)
    clock = Clock()
    listed: list[dict] = []
    shot = QueueSnapshot(lambda: list(listed), lambda: [NODE], lambda: [], clock=clock)
    names = [f"r{index}" for index in range(12)]
    version = 1
    for step in range(150):
        name = rng.choice(names)
        version += 1
        phase = rng.choice([None, "Queued", "Pending", "Running", "Succeeded", "Failed", "Suspended"])
        body = run(name, phase, version=version, job=rng.choice([None, f"{name}-a1"]))
        body["spec"]["resources"]["gpus"] = rng.choice([0, 1, 2])
        body["spec"]["priority"] = rng.choice([0, 5])
        if rng.random() < 0.1:
            body["spec"]["suspend"] = True
        if rng.random() < 0.1:
            body["spec"]["queueName"] = "team"
        if rng.random() < 0.05:
            body["metadata"]["deletionTimestamp"] = "2026-12-01T11:00:00Z"
        if rng.random() < 0.05:
            body["spec"]["model"] = ""  # does not validate
        action = rng.random()
        if action < 0.1:
            shot.heard(body, deleted=True)
        elif action < 0.15:  # the safety net's listing: whatever the API server holds now
            listed[:] = [body]
            clock.now += shot.runs_max_age
        else:
            shot.heard(body)
        for asking in (None, ("ml", rng.choice(names))):
            waiting, held = shot.line(asking)
            expected_waiting, expected_held = line_up(shot.runs(), asking, shot.terms)
            assert held == expected_held, step
            assert sorted(w.key for w in waiting) == sorted(w.key for w in expected_waiting), step


def test_a_waiting_run_moves_up_with_one_patch_of_its_place_and_message_only() -> None:
    from datetime import UTC, datetime

    from azaion_operator.trainingrun.lifecycle import requeued, simply_waiting

    meta = {"name": "r", "namespace": "ml", "generation": 3}
    progressing = {
        "type": "Progressing",
        "status": "False",
        "reason": "WaitingForGPU",
        "message": "waiting for 2 free GPU(s); position 40",
        "lastTransitionTime": "2026-12-01T10:00:00Z",
        "observedGeneration": 3,
    }
    status = {"phase": "Queued", "queuePosition": 40, "observedGeneration": 3, "conditions": [progressing]}
    now = datetime(2026, 12, 1, 11, tzinfo=UTC)
    assert simply_waiting(meta, status)
    assert requeued(meta, status, 2, 38, now) is None  # 5% off far back: the shown place stays
    patch = requeued(meta, status, 2, 30, now)
    assert patch is not None and set(patch) == {"queuePosition", "conditions"} and patch["queuePosition"] == 30
    moved = next(c for c in patch["conditions"] if c["type"] == "Progressing")
    assert moved["message"] == "waiting for 2 free GPU(s); position 30"
    assert moved["lastTransitionTime"] == "2026-12-01T10:00:00Z", "same status and reason: the transition stays"
    # Anything but simply waiting at the current spec takes a whole reconcile.
    assert not simply_waiting({**meta, "generation": 4}, status)
    assert not simply_waiting(meta, {**status, "phase": "Pending"})
    stuck = {**progressing, "reason": "ChildRejected"}
    assert not simply_waiting(meta, {**status, "conditions": [stuck]})
