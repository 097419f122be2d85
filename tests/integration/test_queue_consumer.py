"""The ``azaion-queue`` entrypoint against a real broker: the tree it leaves, its
status, its probes, shutdown, offsets and the disk guard."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from azaion_devtools.broker import StreamEndpoint, consume_raw, publish, query_server_offset
from azaion_devtools.processes import wait_until
from azaion_devtools.wire import noisy_jpeg
from azaion_workloads.fsutil import leftover_temp_files
from tests.fixtures import scenarios
from tests.fixtures.queue_process import QueueProcess, queue_command
from tests.fixtures.rabbitmq import RabbitMQ

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def publish_steps(endpoint: StreamEndpoint, stream: str, steps: list[scenarios.Step]) -> list[int]:
    """Publish and return each message's stream offset (offsets are not a count)."""
    asyncio.run(publish(endpoint, stream, [step.wire for step in steps]))
    received = asyncio.run(consume_raw(endpoint, stream, len(steps)))
    return [offset for offset, _ in received]


def consumer(rabbitmq: RabbitMQ, stream: str, workdir: Path, **settings: str) -> QueueProcess:
    return QueueProcess(
        rabbitmq.endpoint,
        stream,
        workdir / "root",
        workdir / "state",
        workdir / "consumer.log",
        **settings,
    )


def test_a_mixed_sequence_leaves_exactly_the_expected_tree(rabbitmq: RabbitMQ, stream_name: str, workdir: Path) -> None:
    steps = scenarios.build_scenario(seed=5, count=240, malformed_every=12)
    assert {s.reason for s in steps if s.op == "malformed"} >= {"amqp", "status", "msgpack", "name", "gzip"}
    assert {s.op for s in steps} == {"created", "edited", "validated", "deleted", "malformed"}
    assert any(s.validator for s in steps if s.op == "created") and any(
        not s.validator for s in steps if s.op == "created"
    )
    offsets = publish_steps(rabbitmq.endpoint, stream_name, steps)
    queue = consumer(rabbitmq, stream_name, workdir, QUEUE_CONSUMER_NAME="mixed").start()
    try:
        queue.wait_ready()
        queue.wait_for_offset(offsets[-1])

        expected = scenarios.expected_outcome(steps, offsets)
        assert scenarios.read_tree(workdir / "root") == expected.tree
        records = scenarios.quarantine_records(workdir / "root")
        expected_reasons = expected.quarantined
        assert {offset: record["kind"] for offset, record in records.items()} == expected_reasons
        assert all(record["reason"] and record["stream"] == stream_name for record in records.values())
        assert leftover_temp_files(workdir) == []
        # Nothing outside the data root, whatever the names in the messages said.
        assert sorted(p.name for p in workdir.iterdir()) == ["consumer.log", "root", "state"]

        def status_caught_up() -> bool:
            status = queue.status()
            return status.get("offset") == offsets[-1] and status.get("messagesWaiting") == 0

        wait_until(status_caught_up, 20, "the status to show the last offset")
        status = queue.status()
        assert status["messagesProcessed"] == len(steps)
        assert status["messagesQuarantined"] == len(expected_reasons)
        assert status["connected"] is True
        assert 0 < status["diskUsagePercent"] < 100
        assert dt.datetime.fromisoformat(status["lastMessageTime"]).tzinfo is not None
        assert dt.datetime.fromisoformat(status["reportedAt"]).tzinfo is not None
        assert not {"phase", "conditions", "observedGeneration"} & status.keys()

        code, metrics = queue.get("/metrics")
        assert code == 200 and isinstance(metrics, str)
        created = sum(1 for s in steps if s.op == "created")
        assert f'azaion_queue_messages_total{{outcome="applied",type="created"}} {created}.0' in metrics
        assert f"azaion_queue_offset {offsets[-1]}.0" in metrics
        assert "azaion_queue_last_message_age_seconds" in metrics
        assert 'azaion_queue_quarantined_total{reason="name"}' in metrics
        assert queue.get("/healthz")[0] == 200
    finally:
        assert queue.terminate() == 0, queue.log_tail()
    assert queue.stored_offset() == offsets[-1]
    assert asyncio.run(query_server_offset(rabbitmq.endpoint, stream_name, "mixed")) == offsets[-1]
    logs = "\n".join(line.get("message", "") for line in queue.log_lines())
    assert "RABBITMQ_PASSWORD" not in logs and "guest" not in queue.log_path.read_text()


def test_sigterm_finishes_the_message_in_hand_and_stores_its_offset(
    rabbitmq: RabbitMQ, stream_name: str, workdir: Path
) -> None:
    steps = scenarios.build_scenario(seed=8, count=400, malformed_every=0, image_factory=noisy_jpeg)
    offsets = publish_steps(rabbitmq.endpoint, stream_name, steps)
    # A large batch size: only the shutdown itself can store the offset mid-way.
    queue = consumer(
        rabbitmq,
        stream_name,
        workdir,
        QUEUE_COMMIT_EVERY="100000",
        QUEUE_COMMIT_INTERVAL_MS="600000",
    ).start()
    queue.wait_ready()

    def progressed() -> bool:
        body = queue.get("/readyz")[1]
        return isinstance(body, dict) and body.get("offset", -1) >= 20

    wait_until(progressed, 60, "the consumer to apply some messages", 0.02)
    assert queue.terminate(timeout=15) == 0, queue.log_tail()
    stored = queue.stored_offset()
    assert stored is not None and 20 <= stored < offsets[-1], "stop came too late to test anything"
    done = offsets.index(stored) + 1
    # Exactly the messages up to the stored offset were applied, nothing after it.
    assert scenarios.read_tree(workdir / "root") == scenarios.expected_tree(steps[:done], offsets[:done])
    assert leftover_temp_files(workdir) == []

    queue.start()
    queue.wait_ready()
    wait_until(lambda: queue.get("/readyz")[1].get("offset") == offsets[-1], 120, "the rest")  # type: ignore[union-attr]
    assert queue.terminate() == 0
    assert queue.stored_offset() == offsets[-1]
    assert scenarios.read_tree(workdir / "root") == scenarios.expected_tree(steps, offsets)
    assert queue.stored()["messagesProcessed"] == len(steps)  # type: ignore[index]


def test_without_an_offset_file_it_resumes_from_the_server_offset(
    rabbitmq: RabbitMQ, stream_name: str, workdir: Path
) -> None:
    first = scenarios.build_scenario(seed=21, count=30, malformed_every=0)
    offsets = publish_steps(rabbitmq.endpoint, stream_name, first)
    queue = consumer(rabbitmq, stream_name, workdir, QUEUE_CONSUMER_NAME="resume").start()
    queue.wait_for_offset(offsets[-1])
    assert queue.terminate() == 0
    assert asyncio.run(query_server_offset(rabbitmq.endpoint, stream_name, "resume")) == offsets[-1]

    shutil.rmtree(workdir / "state")  # the offset volume was lost
    second = scenarios.build_scenario(seed=22, count=10, malformed_every=0)
    asyncio.run(publish(rabbitmq.endpoint, stream_name, [step.wire for step in second]))
    queue.start()
    queue.wait_ready()
    wait_until(lambda: (queue.stored() or {}).get("messagesProcessed") == len(second), 30, "the new messages")
    assert queue.terminate() == 0
    subscribed = [line for line in queue.log_lines() if line.get("message") == "subscribed"]
    assert subscribed[-1]["from"] == "server"
    assert queue.stored()["messagesProcessed"] == len(second)  # type: ignore[index]


def test_a_full_disk_pauses_consuming_and_reports_not_ready(
    rabbitmq: RabbitMQ, stream_name: str, workdir: Path
) -> None:
    steps = scenarios.build_scenario(seed=31, count=5, malformed_every=0)
    publish_steps(rabbitmq.endpoint, stream_name, steps)
    queue = consumer(
        rabbitmq,
        stream_name,
        workdir,
        QUEUE_DISK_WARN_PERCENT="0.001",
        QUEUE_DISK_CRITICAL_PERCENT="0.001",
    ).start()
    try:
        wait_until(lambda: queue.get("/readyz")[0] == 503, 20, "the readiness endpoint")
        wait_until(lambda: "paused" in str(queue.get("/readyz")[1]), 20, "the disk guard")
        assert queue.get("/healthz")[0] == 200  # paused is not dead: no restart wanted
        assert "azaion_queue_paused_disk_full 1.0" in str(queue.get("/metrics")[1])
        assert scenarios.read_tree(workdir / "root") == {}
        assert queue.stored_offset() is None
    finally:
        assert queue.terminate() == 0, queue.log_tail()


def test_an_unreachable_broker_is_retried_visibly(stream_name: str, workdir: Path) -> None:
    from azaion_devtools.processes import free_port

    nowhere = StreamEndpoint("127.0.0.1", free_port())
    queue = QueueProcess(nowhere, stream_name, workdir / "root", workdir / "state", workdir / "c.log").start()
    try:
        wait_until(lambda: queue.get("/healthz")[0] == 200, 20, "the health endpoint")
        assert queue.get("/readyz")[0] == 503
        wait_until(
            lambda: sum(line.get("message") == "reconnecting" for line in queue.log_lines()) >= 2,
            20,
            "reconnection attempts in the log",
        )
    finally:
        assert queue.terminate(timeout=10) == 0, queue.log_tail()


def test_a_bad_configuration_exits_78_naming_every_problem(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "QUEUE_"))}
    env.update(RABBITMQ_PASSWORD="do-not-print-me", QUEUE_START_FROM="soon", AZAION_ROOT_DIR=str(tmp_path))
    result = subprocess.run(queue_command(), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    for name in ("RABBITMQ_HOST", "RABBITMQ_USER", "QUEUE_START_FROM"):
        assert name in result.stderr
    assert "do-not-print-me" not in result.stderr + result.stdout


def test_refused_credentials_end_in_exit_78(rabbitmq: RabbitMQ, stream_name: str, workdir: Path) -> None:
    endpoint = rabbitmq.endpoint
    wrong = StreamEndpoint(endpoint.host, endpoint.port, endpoint.user, "not-the-password", endpoint.vhost)
    queue = QueueProcess(wrong, stream_name, workdir / "root", workdir / "state", workdir / "c.log").start()
    assert queue.process is not None
    assert queue.process.proc.wait(timeout=60) == 78, queue.log_tail()
    refusals = [line for line in queue.log_lines() if "refused the credentials" in line.get("message", "")]
    assert len(refusals) == 3
    assert "not-the-password" not in queue.log_path.read_text()
