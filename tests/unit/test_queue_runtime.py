"""Offset file, commit policy, quarantine records, disk guard, state, health endpoint, logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
import requests
import yaml

from azaion_devtools.processes import free_port
from azaion_workloads.fsutil import leftover_temp_files
from azaion_workloads.queue.disk import DiskGuard, usage_percent
from azaion_workloads.queue.health import HealthServer
from azaion_workloads.queue.logs import JsonFormatter
from azaion_workloads.queue.metrics import QueueMetrics
from azaion_workloads.queue.offsets import CommitPolicy, OffsetFile, OffsetState
from azaion_workloads.queue.quarantine import Quarantine
from azaion_workloads.queue.state import ConsumerState
from azaion_workloads.queue.wire import MalformedMessage

pytestmark = pytest.mark.unit


def test_offset_file_round_trip(tmp_path: Path) -> None:
    store = OffsetFile(tmp_path / "state" / "offset.yaml")
    assert store.load("s") is None
    when = dt.datetime(2025, 5, 1, 12, tzinfo=dt.UTC)
    store.save(
        OffsetState(stream="s", offset=41, messages_processed=40, messages_quarantined=2, last_message_time=when)
    )
    document = yaml.safe_load(store.path.read_text())
    assert document["offset"] == 41 and document["stream"] == "s"
    assert document["messagesProcessed"] == 40 and document["messagesQuarantined"] == 2
    loaded = store.load("s")
    assert loaded is not None and loaded.offset == 41 and loaded.last_message_time == when
    assert leftover_temp_files(tmp_path) == []


def test_an_offset_for_another_stream_or_a_broken_file_is_not_used(tmp_path: Path) -> None:
    store = OffsetFile(tmp_path / "offset.yaml")
    store.save(OffsetState(stream="old-stream", offset=5))
    assert store.load("s") is None
    store.path.write_text("offset: [unclosed")
    assert store.load("s") is None
    store.path.write_text("stream: s\noffset: -3\n")
    assert store.load("s") is None


def test_commit_policy_counts_and_times() -> None:
    policy = CommitPolicy(every=3, interval_seconds=10)
    assert not policy.due()
    policy.note()
    policy.note()
    assert not policy.due()
    policy.note()
    assert policy.due()
    policy.reset()
    policy.note()
    assert not policy.due()
    assert policy.due(now=time.monotonic() + 11)


def test_quarantine_records_are_deterministic(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path, "s")
    error = MalformedMessage("name", "unsafe or invalid annotation name '../x'")
    first = quarantine.put(12, b"raw-entry", error, 1_747_000_000_000, "Created")
    before = first.read_bytes()
    quarantine.put(12, b"raw-entry", error, 1_747_000_000_000, "Created")
    assert first.read_bytes() == before
    record = json.loads(before)
    assert record == {
        "annotationStatus": "Created",
        "bytes": 9,
        "kind": "name",
        "offset": 12,
        "reason": "name: unsafe or invalid annotation name '../x'",
        "storedAt": "2025-05-11T21:46:40Z",
        "stream": "s",
    }
    assert (tmp_path / "00000000000000000012.msg").read_bytes() == b"raw-entry"


def test_disk_guard_thresholds_and_the_real_measure(tmp_path: Path) -> None:
    levels = iter([50.0, 85.0, 96.0, 90.0, 10.0])
    guard = DiskGuard(tmp_path, 80, 95, measure=lambda _path: next(levels))
    seen = []
    for _ in range(5):
        guard.check()
        seen.append((guard.level, guard.is_critical))
    assert seen == [("ok", False), ("warn", False), ("critical", True), ("warn", False), ("ok", False)]
    assert 0 < usage_percent(tmp_path) < 100


def test_messages_waiting_is_known_only_with_a_tail() -> None:
    state = ConsumerState()
    assert state.messages_waiting() is None
    state.tail_offset = 120
    assert state.messages_waiting() is None  # started at "next": position unknown
    state.start_position = 0
    assert state.messages_waiting() == 121
    state.processed_offset = 100
    assert state.messages_waiting() == 20
    state.processed_offset = 120
    assert state.messages_waiting() == 0
    fields = state.status_fields()
    assert fields["messagesWaiting"] == 0 and fields["offset"] == 120
    assert {"messagesProcessed", "messagesQuarantined", "connected", "reportedAt"} <= fields.keys()
    assert not {"phase", "conditions", "observedGeneration"} & fields.keys()


def test_readiness_needs_a_subscription_and_disk_space() -> None:
    state = ConsumerState(connected=True, disk_percent=40.0)
    assert state.readiness_problems() == [] and state.liveness_problems() == []
    state.disk_critical, state.disk_percent = True, 97.2
    assert state.readiness_problems() == ["data volume 97.2% full: consuming paused"]
    state.disk_critical, state.connected = False, False
    assert state.readiness_problems() == ["not subscribed to the stream"]
    assert state.liveness_problems() == []  # reconnecting is not a reason to restart
    state.loop_tick -= 60
    assert state.liveness_problems() and state.readiness_problems()


def get(url: str) -> tuple[int, bytes]:
    response = requests.get(url, timeout=5)
    return response.status_code, response.content


def test_health_endpoint_serves_probes_and_metrics() -> None:
    state = ConsumerState(connected=False, disk_percent=12.5, processed_offset=7, messages_processed=8)
    metrics = QueueMetrics(state)
    metrics.messages.labels("created", "applied").inc(5)
    metrics.messages.labels("unknown", "quarantined").inc()
    server = HealthServer(free_port(), state, metrics, host="127.0.0.1")
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/healthz")[0] == 200
        code, body = get(f"{base}/readyz")
        assert code == 503 and "not subscribed" in json.loads(body)["problems"][0]
        state.connected = True
        code, body = get(f"{base}/readyz")
        assert code == 200 and json.loads(body)["offset"] == 7
        code, text = get(f"{base}/metrics")
        assert code == 200
        lines = text.decode()
        assert 'azaion_queue_messages_total{outcome="applied",type="created"} 5.0' in lines
        assert "azaion_queue_offset 7.0" in lines
        assert "azaion_queue_data_volume_usage_percent 12.5" in lines
        assert "azaion_queue_ready 1.0" in lines
        assert get(f"{base}/nothing")[0] == 404
    finally:
        server.stop()


def test_json_logs_never_carry_bytes() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "hello %s", ("world",), None)
    record.payload = b"\xff\xd8secret-pixels"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello world" and line["payload"] == "<15 bytes>"


def test_a_subscription_is_stalled_only_when_messages_wait_unanswered() -> None:
    state = ConsumerState(connected=True, processed_offset=10, last_progress=0.0)
    state.observe_tail(10, now=100.0)
    assert state.waiting_since is None and not state.stalled(1000.0, 0.0, 60)
    # A message arrives after a long idle time: not a stall until it has waited.
    state.observe_tail(12, now=200.0)
    assert state.waiting_since == 200.0
    assert not state.stalled(230.0, 0.0, 60)
    assert state.stalled(261.0, 0.0, 60)
    assert not state.stalled(261.0, 250.0, 60)  # just resubscribed
    state.disk_critical = True
    assert not state.stalled(261.0, 0.0, 60)  # paused on purpose
    state.disk_critical = False
    state.processed_offset, state.last_progress = 12, 262.0
    state.observe_tail(12, now=263.0)
    assert state.waiting_since is None and not state.stalled(400.0, 0.0, 60)


class _Recorder:
    def __init__(self) -> None:
        self.reports: list[dict[str, object]] = []

    def report(self, fields: dict[str, object]) -> None:
        self.reports.append(fields)


def test_status_reports_clear_messages_waiting_once_it_is_unknown(tmp_path: Path) -> None:
    import asyncio

    from azaion_workloads.queue.config import load_config
    from azaion_workloads.queue.consumer import StreamConsumer

    config = load_config(
        {
            "RABBITMQ_HOST": "127.0.0.1",
            "RABBITMQ_USER": "u",
            "RABBITMQ_PASSWORD": "p",
            "AZAION_ROOT_DIR": str(tmp_path / "root"),
            "QUEUE_OFFSET_FILE": str(tmp_path / "state" / "offset.yaml"),
        }
    )
    reporter = _Recorder()

    async def scenario() -> None:
        queue = StreamConsumer(config, reporter)
        queue.state.processed_offset, queue.state.tail_offset = 5, 9
        await queue.periodic.report_once(timeout=5)
        queue.state.tail_offset = None
        await queue.periodic.report_once(timeout=5)
        await queue.periodic.report_once(timeout=5)

    asyncio.run(scenario())
    first, second, third = reporter.reports
    assert first["messagesWaiting"] == 4 and first["offset"] == 5
    assert second["messagesWaiting"] is None  # a merge patch removes the stale value
    assert "messagesWaiting" not in third
