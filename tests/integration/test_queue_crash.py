"""kill -9 at random moments while 1,000 messages are consumed: after the restarts the
tree is exactly the expected one, no temporary file is left, and the stored offset
is the last message's.

Each trial is seeded (its number), so a failure can be replayed. The data root
lives on tmpfs when there is one: a kill -9 ends the process, not the kernel, so
page-cache durability is not what is being tested here, and the trials stay fast.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from azaion_devtools.broker import consume_raw, create_stream, delete_stream, publish, query_server_offset
from azaion_devtools.processes import wait_until
from azaion_workloads.fsutil import leftover_temp_files
from tests.fixtures.kill_hook import kill_hook_env
from tests.fixtures.queue_process import QueueProcess
from tests.fixtures.rabbitmq import RabbitMQ
from tests.fixtures.scenarios import Expected, Step, build_scenario, expected_outcome, read_tree

pytestmark = pytest.mark.integration


def _progress(queue: QueueProcess) -> int:
    """The last offset the running consumer applied (-1 before the first)."""
    body = queue.get("/readyz")[1]
    return body.get("offset", -1) if isinstance(body, dict) else -1


TRIALS = 20
MESSAGES = 1000


@pytest.fixture(scope="module")
def crash_stream(rabbitmq: RabbitMQ) -> Iterator[tuple[str, list[Step], list[int]]]:
    name = f"azaion-crash-{uuid.uuid4().hex[:8]}"
    steps = build_scenario(seed=77, count=MESSAGES, malformed_every=40)
    asyncio.run(create_stream(rabbitmq.endpoint, name))
    asyncio.run(publish(rabbitmq.endpoint, name, [step.wire for step in steps]))
    offsets = [offset for offset, _ in asyncio.run(consume_raw(rabbitmq.endpoint, name, MESSAGES))]
    yield name, steps, offsets
    if rabbitmq.running:
        asyncio.run(delete_stream(rabbitmq.endpoint, name))


@pytest.fixture(scope="module")
def expected(crash_stream: tuple[str, list[Step], list[int]]) -> Expected:
    _, steps, offsets = crash_stream
    outcome = expected_outcome(steps, offsets)
    # The trials cover the sequences around deletions: refused edits, and names
    # deleted, created again and deleted again (kept under name~digest).
    assert {"edit-of-deleted", "edit-without-image"} <= set(outcome.quarantined.values())
    assert any("~" in path for path in outcome.tree)
    return outcome


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if shm.is_dir():
        directory = Path(tempfile.mkdtemp(prefix="azaion-crash-", dir=shm))
        yield directory
        shutil.rmtree(directory, ignore_errors=True)
    else:
        yield tmp_path


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_at_random_moments(
    rabbitmq: RabbitMQ,
    crash_stream: tuple[str, list[Step], list[int]],
    expected: Expected,
    fast_dir: Path,
    tmp_path: Path,
    trial: int,
) -> None:
    stream, _steps, offsets = crash_stream
    rng = random.Random(trial)
    reference = f"crash-{trial}-{uuid.uuid4().hex[:6]}"  # a server-side offset of its own
    queue = QueueProcess(
        rabbitmq.endpoint,
        stream,
        fast_dir / "root",
        fast_dir / "state",
        tmp_path / "consumer.log",
        QUEUE_CONSUMER_NAME=reference,
        QUEUE_COMMIT_EVERY=str(rng.choice([1, 7, 50, 500])),
        QUEUE_COMMIT_INTERVAL_MS=str(rng.choice([20, 100, 1000])),
    )
    # Kill points: random positions in the stream (seeded), plus now and then a kill
    # during start-up, before the subscription exists.
    targets = sorted(rng.sample(range(len(offsets) - 20), rng.randint(2, 4)))
    kills = []
    for target in targets:
        queue.start()
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            wait_until(lambda target=target: _progress(queue) >= offsets[target], 60, "progress", 0.005)
        queue.kill()
        kills.append(queue.stored_offset())
    queue.start()
    queue.wait_ready()  # a killed run may have stored the last offset already
    queue.wait_for_offset(offsets[-1], timeout=120)
    assert queue.terminate() == 0, queue.log_tail()

    assert read_tree(fast_dir / "root") == expected.tree, f"kills after stored offsets {kills}"
    assert leftover_temp_files(fast_dir) == []
    stored = queue.stored()
    assert stored is not None and stored["offset"] == offsets[-1]
    # Totals travel with the offset, so replayed messages were counted once.
    assert stored["messagesProcessed"] == MESSAGES
    assert stored["messagesQuarantined"] == len(expected.quarantined)
    assert asyncio.run(query_server_offset(rabbitmq.endpoint, stream, reference)) == offsets[-1]


#: (point, n): SIGKILL at the n-th such moment of a group commit (tests/fixtures/kill_hook.py).
EXACT_KILLS = [("staging", 1), ("staging", 451), ("rename", 1), ("rename", 320), ("offset", 1), ("offset", 3)]


@pytest.mark.parametrize(("point", "count"), EXACT_KILLS, ids=[f"{p}-{n}" for p, n in EXACT_KILLS])
def test_kill_9_inside_a_batch(
    rabbitmq: RabbitMQ,
    crash_stream: tuple[str, list[Step], list[int]],
    expected: Expected,
    fast_dir: Path,
    tmp_path: Path,
    point: str,
    count: int,
) -> None:
    """Killed while a batch is staged, half renamed, or durable but its offset not stored: the restart converges."""
    stream, _steps, offsets = crash_stream
    root, state = fast_dir / "root", fast_dir / "state"
    reference = f"exact-{point}-{count}-{uuid.uuid4().hex[:6]}"
    queue = QueueProcess(
        rabbitmq.endpoint,
        stream,
        root,
        state,
        tmp_path / "consumer.log",
        QUEUE_CONSUMER_NAME=reference,
        QUEUE_COMMIT_EVERY="500",
        QUEUE_COMMIT_INTERVAL_MS="1000",
    )
    hook = kill_hook_env(tmp_path / "hook", point, count, root, state / "offset.yaml")
    queue.env.update(hook)
    queue.start()
    wait_until(lambda: not queue.alive, 60, f"the consumer to be killed at {point} #{count}", 0.01)
    assert queue.process is not None and queue.process.proc.returncode == -9, queue.log_tail()
    stored_at_kill = queue.stored_offset()
    # Only the hook sends SIGKILL; where it lands leaves its trace: the file
    # about to be renamed is still under its temporary name.
    if point == "offset":
        assert leftover_temp_files(state), "the kill did not land before the offset was stored"
    elif point == "rename":
        assert leftover_temp_files(root), "the kill did not land among the batch's renames"
    assert stored_at_kill is None or stored_at_kill < offsets[-1]

    for name in hook:
        queue.env.pop(name)
    queue.start()
    queue.wait_ready()
    queue.wait_for_offset(offsets[-1], timeout=120)
    assert queue.terminate() == 0, queue.log_tail()
    assert read_tree(root) == expected.tree, f"killed at {point} #{count} after stored offset {stored_at_kill}"
    assert leftover_temp_files(fast_dir) == []
    stored = queue.stored()
    assert stored is not None and stored["offset"] == offsets[-1]
    assert stored["messagesProcessed"] == MESSAGES
    assert stored["messagesQuarantined"] == len(expected.quarantined)
