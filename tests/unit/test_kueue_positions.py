"""A Kueue-queued run's place in line, from Kueue's visibility API: parsed, cached per
LocalQueue, and absent (never an error) where the API is not served."""

from __future__ import annotations

import json
from typing import Any

import pytest

from azaion_operator.kit.apiclient import ApiError
from azaion_operator.trainingrun.kueue import PendingPositions, pending_workloads_path, positions
from azaion_operator.trainingrun.lifecycle import KueueView, decide
from tests.unit.test_operator_logic import META, NOW, RUNNING_STATUS, spec


def _pending(job_uid: str, in_cluster_queue: int, in_local_queue: int) -> dict[str, Any]:
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": f"job-{job_uid}", "uid": job_uid}
    return {
        "metadata": {"name": f"job-{job_uid}-x", "namespace": "team", "ownerReferences": [owner]},
        "positionInClusterQueue": in_cluster_queue,
        "positionInLocalQueue": in_local_queue,
        "priority": 0,
        "localQueueName": "gpus",
    }


class Server:
    """Answers like Kueue's visibility API (or like an API server that does not serve it)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.summaries: dict[str, dict[str, Any]] = {}
        self.error: ApiError | None = None

    def fetch(self, path: str) -> dict[str, Any]:
        self.calls.append(path)
        if self.error is not None:
            raise self.error
        return self.summaries[path]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_positions_are_the_jobs_places_in_the_cluster_queue_counted_from_one():
    summary = {"items": [_pending("a", 0, 0), _pending("b", 3, 1), {"metadata": {}, "positionInClusterQueue": 4}]}
    assert positions(summary) == {"a": 1, "b": 4}, "the ClusterQueue's place; an item owned by no Job is skipped"
    assert positions({}) == {}


def test_one_read_per_local_queue_answers_every_run_until_it_is_stale():
    server, clock = Server(), Clock()
    path = pending_workloads_path("team", "gpus")
    assert path == "/apis/visibility.kueue.x-k8s.io/v1beta2/namespaces/team/localqueues/gpus/pendingworkloads"
    server.summaries[path] = {"items": [_pending("a", 0, 0), _pending("b", 1, 1)]}
    cache = PendingPositions(fetch=server.fetch, max_age=1.0, clock=clock)
    assert (cache.of("team", "gpus", "a"), cache.of("team", "gpus", "b"), cache.of("team", "gpus", "c")) == (1, 2, None)
    assert len(server.calls) == 1
    server.summaries[path] = {"items": [_pending("b", 0, 0)]}
    assert cache.of("team", "gpus", "b") == 2, "within max_age the read stands"
    clock.now += 1.0
    assert cache.of("team", "gpus", "b") == 1 and len(server.calls) == 2


def test_an_api_that_is_not_served_shows_no_place_and_is_asked_again_only_later():
    server, clock = Server(), Clock()
    server.error = ApiError(503, "Service Unavailable", "the server is currently unable to handle the request")
    cache = PendingPositions(fetch=server.fetch, retry_after=60.0, clock=clock)
    assert cache.of("team", "gpus", "a") is None and cache.of("other", "gpus", "b") is None
    assert len(server.calls) == 1, "one refusal stands for every LocalQueue"
    clock.now += 59.0
    assert cache.of("team", "gpus", "a") is None and len(server.calls) == 1
    server.error = None
    server.summaries[pending_workloads_path("team", "gpus")] = {"items": [_pending("a", 2, 0)]}
    clock.now += 1.0
    assert cache.of("team", "gpus", "a") == 3


def test_a_local_queue_kueue_does_not_know_shows_no_place_without_stopping_the_others():
    server, clock = Server(), Clock()
    details = {"name": "nope", "group": "visibility.kueue.x-k8s.io", "kind": "localqueue"}
    unknown = {"kind": "Status", "reason": "NotFound", "details": details}
    server.error = ApiError(404, "Not Found", json.dumps(unknown))
    cache = PendingPositions(fetch=server.fetch, clock=clock)
    assert cache.of("team", "nope", "a") is None
    server.error = None
    server.summaries[pending_workloads_path("team", "gpus")] = {"items": [_pending("b", 0, 0)]}
    assert cache.of("team", "gpus", "b") == 1, "Kueue serves: other LocalQueues are still asked"


@pytest.mark.parametrize(
    "error", [ApiError(500, "Internal Server Error", "boom"), TimeoutError("read timed out")], ids=["500", "timeout"]
)
def test_a_failing_api_shows_no_place_and_never_stops_a_reconcile(error: Exception):
    server, clock = Server(), Clock()
    server.error = error
    cache = PendingPositions(fetch=server.fetch, retry_after=60.0, clock=clock)
    assert cache.of("team", "gpus", "a") is None and cache.of("team", "gpus", "a") is None
    assert len(server.calls) == 1, "asked again only after retry_after"


def test_a_queued_runs_status_shows_kueues_place_and_far_back_places_move_in_steps():
    held = {"metadata": {"name": "run-a1"}, "spec": {"suspend": True}, "status": {}}

    def waiting(position: int | None, shown: int | None = None) -> dict[str, Any]:
        status = {**RUNNING_STATUS, "queuePosition": shown}
        view = KueueView("gpus", position=position)
        return decide(META, spec(queueName="gpus"), status, held, [], NOW, "img", kueue=view).status

    status = waiting(3)
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert status["queuePosition"] == 3 and status["phase"] == "Queued"
    assert progressing["message"].endswith("(LocalQueue gpus; position 3 in its ClusterQueue)")
    assert waiting(None, shown=3)["queuePosition"] is None, "no place where Kueue does not say"
    assert waiting(95, shown=100)["queuePosition"] == 100, "far back, the shown place stays until 25% away"
    assert waiting(70, shown=100)["queuePosition"] == 70


def test_a_run_kueue_admits_shows_no_place_any_more():
    admitted = {"metadata": {"name": "run-a1"}, "spec": {"suspend": False}, "status": {}}
    status = {**RUNNING_STATUS, "queuePosition": 1}
    decision = decide(META, spec(queueName="gpus"), status, admitted, [], NOW, "img", kueue=KueueView("gpus"))
    assert decision.status["phase"] != "Queued" and decision.status["queuePosition"] is None
