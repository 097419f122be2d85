"""Per-run gauges, read at scrape time from the runs the watch delivered."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from azaion_operator.trainingrun.runmetrics import RunCollector, run_families

pytestmark = pytest.mark.unit


def _run(name: str, status: dict) -> dict:
    return {"metadata": {"namespace": "ml", "name": name}, "status": status}


def test_each_run_shows_its_phase_progress_and_counts_and_nothing_it_lacks() -> None:
    runs = [
        _run(
            "training",
            {
                "phase": "Running",
                "attempts": 2,
                "preemptions": 1,
                "progress": {"epoch": 3, "epochs": 10, "etaSeconds": 420, "metrics": {"map50": 0.61, "map50_95": 0.4}},
            },
        ),
        _run("waiting", {"phase": "Queued", "queuePosition": 4}),
        _run("new", {}),
        _run("odd", {"phase": "Running", "attempts": True, "progress": {"epoch": "3", "metrics": None}}),
    ]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in run_families(runs)
        for sample in family.samples
    }

    def value(metric: str, name: str, **extra: str) -> float | None:
        return samples.get((metric, tuple(sorted({"namespace": "ml", "name": name, **extra}.items()))))

    assert value("azaion_trainingrun_phase", "training", phase="Running") == 1
    assert value("azaion_trainingrun_phase", "new", phase="Pending") == 1  # no status yet
    assert value("azaion_trainingrun_epoch", "training") == 3
    assert value("azaion_trainingrun_eta_seconds", "training") == 420
    assert value("azaion_trainingrun_map50_95", "training") == 0.4
    assert value("azaion_trainingrun_run_attempts", "training") == 2
    assert value("azaion_trainingrun_run_preemptions", "training") == 1
    assert value("azaion_trainingrun_queue_position", "waiting") == 4
    # Missing or mistyped fields leave no sample (a bool is no count, a string no epoch).
    assert value("azaion_trainingrun_epoch", "waiting") is None
    assert value("azaion_trainingrun_run_attempts", "odd") is None
    assert value("azaion_trainingrun_epoch", "odd") is None


def test_a_scrape_follows_the_runs_as_they_are_now() -> None:
    runs = [_run("a", {"phase": "Running"})]
    registry = CollectorRegistry()
    registry.register(RunCollector(lambda: list(runs)))
    assert 'azaion_trainingrun_phase{name="a",namespace="ml",phase="Running"} 1.0' in generate_latest(registry).decode()
    runs.clear()  # deleted: its series go with it
    text = generate_latest(registry).decode()
    assert 'name="a"' not in text and "# TYPE azaion_trainingrun_epoch gauge" in text
