"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS_BY_PHASE = Gauge("azaion_trainingruns", "TrainingRuns by phase", ["phase"])
QUEUE_LENGTH = Gauge("azaion_trainingrun_queue_length", "TrainingRuns waiting for GPUs")
ATTEMPTS = Counter("azaion_trainingrun_attempts_total", "Training Jobs started")
FAILURES = Counter("azaion_trainingrun_failures_total", "Training attempts that failed", ["reason"])
CHILD_REJECTIONS = Counter(
    "azaion_child_rejections_total", "Objects built from a spec that the API server refused", ["resource", "kind"]
)
RECONCILE_BLOCKED = Counter(
    "azaion_reconcile_blocked_total",
    "Attempts to create a resource's children that stopped on a refusal or a missing object",
    ["resource", "reason"],
)
PREEMPTIONS = Counter("azaion_trainingrun_preemptions_total", "Training pods lost to disruptions")
RECONCILE_ERRORS = Counter("azaion_reconcile_errors_total", "Reconciles that raised", ["kind"])
RECONCILE_SECONDS = Histogram("azaion_reconcile_duration_seconds", "Time spent per reconcile", ["kind"])
CONSUMERS_BY_PHASE = Gauge("azaion_annotationconsumers", "AnnotationConsumers by phase", ["phase"])
