"""The broker dies (kill -9) for 10 s in the middle of consuming and comes back:
nothing is lost, readiness goes false and then true, liveness never fails."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from azaion_devtools.broker import consume_raw, publish
from azaion_devtools.processes import wait_until
from azaion_devtools.wire import noisy_jpeg
from tests.fixtures.queue_process import QueueProcess
from tests.fixtures.rabbitmq import RabbitMQ
from tests.fixtures.scenarios import build_scenario, expected_tree, read_tree

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 10.0


class ProbeRecorder(threading.Thread):
    """Samples /readyz and /healthz until stopped."""

    def __init__(self, queue: QueueProcess) -> None:
        super().__init__(daemon=True)
        self.queue = queue
        self.samples: list[tuple[float, bool, bool]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                ready = self.queue.get("/readyz")[0] == 200
                alive = self.queue.get("/healthz")[0] == 200
                self.samples.append((time.monotonic(), ready, alive))
            except Exception:
                self.samples.append((time.monotonic(), False, False))
            self._stop_event.wait(0.1)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def readiness_changes(self) -> list[bool]:
        changes: list[bool] = []
        for _, ready, _ in self.samples:
            if not changes or changes[-1] != ready:
                changes.append(ready)
        return changes


def test_a_broker_outage_loses_nothing(rabbitmq: RabbitMQ, stream_name: str, tmp_path: Path) -> None:
    if not rabbitmq.can_restart:
        pytest.skip("the broker is external (--rabbitmq): it cannot be stopped")
    before = build_scenario(seed=41, count=60, malformed_every=0)
    # A long batch of 50 KB images: the broker dies in the middle of it.
    middle = build_scenario(seed=42, count=800, malformed_every=0, image_factory=noisy_jpeg)
    after = build_scenario(seed=43, count=60, malformed_every=20)
    endpoint = rabbitmq.endpoint
    asyncio.run(publish(endpoint, stream_name, [s.wire for s in before]))

    queue = QueueProcess(endpoint, stream_name, tmp_path / "root", tmp_path / "state", tmp_path / "c.log")
    queue.start()
    queue.wait_for_offset(len(before) - 1)
    # Publish the second batch while the consumer is down, so the outage below
    # is sure to find it in the middle of the batch, however fast it consumes.
    assert queue.terminate() == 0
    asyncio.run(publish(endpoint, stream_name, [s.wire for s in middle]))
    queue.start()
    queue.wait_ready()
    recorder = ProbeRecorder(queue)
    recorder.start()
    try:

        def busy_with_middle() -> bool:
            body = queue.get("/readyz")[1]
            return isinstance(body, dict) and body.get("offset", 0) >= len(before) + 10

        wait_until(busy_with_middle, 30, "the consumer to start on the second batch", 0.02)
        rabbitmq.stop(kill=True)  # a crash: connections drop at once, mid-batch
        down_since = time.monotonic()
        wait_until(lambda: not queue.ready(), 15, "readiness to turn false")
        assert queue.get("/healthz")[0] == 200
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))
        rabbitmq.start()

        asyncio.run(publish(endpoint, stream_name, [s.wire for s in after]))
        steps = before + middle + after
        offsets = [offset for offset, _ in asyncio.run(consume_raw(endpoint, stream_name, len(steps)))]
        wait_until(queue.ready, 60, "readiness to come back")
        queue.wait_for_offset(offsets[-1], timeout=120)
    finally:
        recorder.stop()
        code = queue.terminate()
    assert code == 0, queue.log_tail()

    assert read_tree(tmp_path / "root") == expected_tree(steps, offsets)
    assert queue.stored()["messagesProcessed"] == len(steps)  # type: ignore[index]
    assert recorder.readiness_changes() == [True, False, True]
    assert all(alive for _, _, alive in recorder.samples), "liveness failed during the outage"
    messages = [line.get("message") for line in queue.log_lines()]
    assert "stream connection lost" in messages or "cannot consume from the stream; retrying" in messages
    assert messages.count("subscribed") >= 2
    resumed = [line for line in queue.log_lines() if line.get("message") == "subscribed"][-1]
    assert resumed["from"] == "file" and resumed["offset"] < offsets[len(before) + len(middle) - 1], (
        "the outage did not interrupt the second batch"
    )
