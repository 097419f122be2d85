"""The TrainingRun controller's pure policies: who holds GPUs, TTL, disruptions counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.trainingrun.lifecycle import count_disruption, ttl_expired
from azaion_operator.trainingrun.queue import line_up

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def run(name: str, phase: str | None, *, gpus: int = 1, job: str | None = None, **spec: object) -> dict:
    body = {"model": "yolo26n.yaml", "storage": {"claimName": "data"}, "resources": {"gpus": gpus}, **spec}
    status = {"phase": phase, "jobName": job} if phase else {}
    meta = {"name": name, "namespace": "ml", "creationTimestamp": f"2026-12-01T10:00:0{len(name) % 10}Z"}
    return {"metadata": meta, "spec": body, "status": status}


def test_the_queue_counts_held_gpus_and_lines_up_the_rest() -> None:
    runs = [
        run("training", "Running", gpus=2, job="training-a1"),
        run("backoff", "Pending", job="backoff-a1"),  # between attempts: keeps its GPU
        run("queued", "Queued"),
        run("new", None),
        run("asking", "Running", job="asking-a2"),  # the asking run never holds against itself
        run("cpu", None, gpus=0),
        run("done", "Succeeded", job="done-a1"),
        run("paused", "Queued", suspend=True),
    ]
    waiting, reserved = line_up(runs, ("ml", "asking"))
    assert reserved == 3
    assert sorted(w.key[1] for w in waiting) == ["asking", "new", "queued"]


def test_a_deleted_or_unreadable_run_is_not_in_line() -> None:
    deleted = run("gone", "Queued")
    deleted["metadata"]["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    broken = run("broken", "Queued")
    broken["spec"]["training"] = {"epochs": 0}
    assert line_up([deleted, broken], ("ml", "x")) == ([], 0)


def test_ttl_expires_only_for_finished_runs_past_it() -> None:
    spec = TrainingRunSpec.model_validate(
        {"model": "m.yaml", "storage": {"claimName": "d"}, "ttlSecondsAfterFinished": 60}
    )
    finished = {"phase": "Succeeded", "completionTime": "2026-12-01T11:58:00Z"}
    assert ttl_expired(spec, finished, NOW)
    assert not ttl_expired(spec, finished, NOW - timedelta(minutes=1, seconds=30))
    assert not ttl_expired(spec, {**finished, "phase": "Running"}, NOW)
    no_ttl = TrainingRunSpec.model_validate({"model": "m.yaml", "storage": {"claimName": "d"}})
    assert not ttl_expired(no_ttl, finished, NOW)


def test_a_disrupted_pod_counts_once_as_one_preemption() -> None:
    first = count_disruption({}, "run-a1-x")
    assert first is not None
    assert first.status == {"preemptedPods": ["run-a1-x"]} and first.preemptions == 1
    assert [reason for _, reason, _ in first.events] == ["Preempted"]
    assert count_disruption(first.status, "run-a1-x") is None
    second = count_disruption(first.status, "run-a1-y")
    assert second is not None and second.status == {"preemptedPods": ["run-a1-x", "run-a1-y"]}


def test_a_status_patch_refuses_a_misspelt_field() -> None:
    from azaion_contract.models.annotationconsumer import AnnotationConsumerStatus

    assert AnnotationConsumerStatus.patch(seen_offset=None, phase="Running") == {"seenOffset": None, "phase": "Running"}
    with pytest.raises(TypeError, match="no field seen_ofset"):
        AnnotationConsumerStatus.patch(seen_ofset=3)


def test_the_run_status_writer_refuses_unknown_keys_and_bad_values() -> None:
    from azaion_contract.models.trainingrun import TrainingRunStatus

    good = {"phase": "Queued", "queuePosition": 2, "rejectedGeneration": None}
    assert TrainingRunStatus.checked(good) is good
    with pytest.raises(TypeError, match="no field queuePositon"):
        TrainingRunStatus.checked({"queuePositon": 2})
    with pytest.raises(ValueError, match="phase"):
        TrainingRunStatus.checked({"phase": "Finished"})
