"""Prometheus metrics of the consumer, in a registry of its own."""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from azaion_workloads.queue.state import ConsumerState

MESSAGE_TYPES = ("created", "edited", "validated", "deleted", "unknown")


class QueueMetrics:
    def __init__(self, state: ConsumerState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "azaion_queue_messages",
            "Messages handled, by type and outcome (applied, quarantined).",
            ["type", "outcome"],
            registry=r,
        )
        self.quarantined = Counter(
            "azaion_queue_quarantined",
            "Messages put in quarantine, by reason.",
            ["reason"],
            registry=r,
        )
        self.apply_seconds = Histogram(
            "azaion_queue_message_seconds",
            "Time to decode and durably apply one message.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=r,
        )
        self.commits = Counter("azaion_queue_offset_commits", "Offset file writes.", registry=r)
        self.reconnects = Counter("azaion_queue_reconnects", "Connection attempts after the first.", registry=r)
        gauges = {
            "azaion_queue_offset": (
                "Last stream offset whose effects are durable.",
                lambda: _or_nan(state.processed_offset),
            ),
            "azaion_queue_committed_offset": (
                "Offset stored in the offset file.",
                lambda: _or_nan(state.committed_offset),
            ),
            "azaion_queue_last_message_timestamp_seconds": (
                "Broker timestamp of the last processed message (Unix time).",
                lambda: state.last_message_time.timestamp() if state.last_message_time else math.nan,
            ),
            "azaion_queue_last_message_age_seconds": (
                "Seconds since the broker stored the last processed message.",
                lambda: time.time() - state.last_message_time.timestamp() if state.last_message_time else math.nan,
            ),
            "azaion_queue_messages_waiting": (
                "Stream offsets after the last processed one (upper bound; NaN if unknown).",
                lambda: _or_nan(state.messages_waiting()),
            ),
            "azaion_queue_data_volume_usage_percent": (
                "Used space of the data volume.",
                lambda: _or_nan(state.disk_percent),
            ),
            "azaion_queue_connected": ("1 while subscribed.", lambda: float(state.connected)),
            "azaion_queue_ready": (
                "1 while ready (subscribed, disk below critical).",
                lambda: float(not state.readiness_problems()),
            ),
            "azaion_queue_paused_disk_full": (
                "1 while consuming is paused because the disk is critically full.",
                lambda: float(state.disk_critical),
            ),
        }
        for name, (documentation, function) in gauges.items():
            Gauge(name, documentation, registry=r).set_function(function)


def _or_nan(value: float | int | None) -> float:
    return math.nan if value is None else float(value)
