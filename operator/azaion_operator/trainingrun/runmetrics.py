"""Each TrainingRun's state as metrics, read at scrape time from what the watch keeps.

A dashboard of runs (phase, epoch, mAP, ETA, attempts, preemptions) needs
them per run; the GPU queue's snapshot already holds every run as the watch
last delivered it, trainer progress reports included, so a scrape costs no
API call and no bookkeeping on events. A run that is gone leaves no series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LABELS = ["namespace", "name"]

#: metric suffix -> (help, where its value is in the status)
_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "epoch": ("Last finished epoch of the run (status.progress.epoch)", ("progress", "epoch")),
    "epochs": ("Epochs the run trains (status.progress.epochs)", ("progress", "epochs")),
    "progress_percent": ("Training progress of the run in percent", ("progress", "percent")),
    "eta_seconds": ("Estimated seconds until the run's training finishes", ("progress", "etaSeconds")),
    "map50": ("mAP at IoU 0.5 of the run's last epoch", ("progress", "metrics", "map50")),
    "map50_95": ("mAP at IoU 0.5..0.95 of the run's last epoch", ("progress", "metrics", "map50_95")),
    "box_loss": ("Box loss of the run's last epoch", ("progress", "metrics", "boxLoss")),
    "run_attempts": ("Jobs the run has started (status.attempts)", ("attempts",)),
    "run_failures": ("Attempts of the run that failed (status.failures)", ("failures",)),
    "run_preemptions": ("Disruptions of the run (status.preemptions)", ("preemptions",)),
    "queue_position": ("The run's place in the GPU queue while Queued (1 = next)", ("queuePosition",)),
}


def _value(status: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = status
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def run_families(runs: Iterable[dict[str, Any]]) -> list[GaugeMetricFamily]:
    """The per-run gauges of ``runs`` (families are there even without samples)."""
    phase = GaugeMetricFamily(
        "azaion_trainingrun_phase", "1 for the run's current phase (status.phase)", labels=[*LABELS, "phase"]
    )
    gauges = {
        suffix: GaugeMetricFamily(f"azaion_trainingrun_{suffix}", documentation, labels=LABELS)
        for suffix, (documentation, _) in _GAUGES.items()
    }
    for run in runs:
        meta, status = run.get("metadata") or {}, run.get("status") or {}
        labels = [meta.get("namespace", ""), meta.get("name", "")]
        phase.add_metric([*labels, str(status.get("phase") or "Pending")], 1.0)
        for suffix, (_, path) in _GAUGES.items():
            value = _value(status, path)
            if value is not None:
                gauges[suffix].add_metric(labels, value)
    return [phase, *gauges.values()]


class RunCollector(Collector):
    def __init__(self, runs: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._runs = runs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from run_families(self._runs())
