"""Checkpoints mirrored to a real S3 server (moto over HTTP), and a run that moves to another node.

Real CPU training through the ``azaion-train`` entrypoint, as in
``test_training_resume.py``: tiny images, batch 2, ``workers=0``. The first
attempt trains past epoch 1 and is stopped by SIGTERM mid-epoch; its data
root is then deleted, and the second attempt runs on a fresh one (another
node, another data volume, the same annotations): it finds no local
checkpoint, restores the mirrored one and trains on from that batch.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path

import pytest

import azaion_contract as contract
from azaion_devtools.synthetic import write_annotations
from azaion_workloads.training import crypto
from azaion_workloads.training.checkpoints import CheckpointStore, Position, load_checkpoint_bytes
from tests.fixtures.s3 import S3Server
from tests.integration.test_training_resume import BATCHES, IMAGES, SETTINGS, _wait_for_batches
from tests.integration.test_training_run import IMGSZ, Run

pytestmark = pytest.mark.integration


def _node(tmp: Path, node: str, s3: S3Server, bucket: str, key_file: Path) -> Run:
    """One node's data root with the annotations, running the run ``moving`` with mirroring on."""
    (tmp / node).mkdir()
    run = Run(
        tmp / node,
        "moving",
        **{**SETTINGS, "TRAINING_EPOCHS": "2"},
        **s3.env(),
        S3_BUCKET=bucket,
        S3_MIRROR_CHECKPOINTS="true",
        ENCRYPTION_KEY_FILE=str(key_file),
        NETGUARD_ALLOW=s3.endpoint.removeprefix("http://"),
    )
    write_annotations(run.root / "data", IMAGES, size=IMGSZ)
    return run


def _mirrored(s3: S3Server, bucket: str) -> dict[str, bytes]:
    prefix = "models/checkpoints/local/moving/"
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {
        item["Key"].removeprefix(prefix): client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }


def test_a_run_resumes_on_another_node_from_its_s3_mirror(tmp_path: Path, s3_server: S3Server) -> None:
    if not s3_server.started:
        pytest.skip("the network guard can only allow a local S3 server")
    bucket = s3_server.new_bucket()
    key = os.urandom(32)
    key_file = tmp_path / "key"
    key_file.write_text(key.hex())

    # Node A: epoch 1 and part of epoch 2, then SIGTERM (a preemption): a mid-epoch checkpoint.
    first = _node(tmp_path, "node-a", s3_server, bucket, key_file)
    process = first.start("run-1.log")
    try:
        _wait_for_batches(first, process, Position(1, 40))
        os.killpg(process.proc.pid, signal.SIGTERM)
        code = process.proc.wait(timeout=120)
    finally:
        process.stop()
    log = (first.tmp / "run-1.log").read_text()
    assert code == contract.EXIT_INTERRUPTED, log[-3000:]
    local = CheckpointStore(first.run_dir)
    ((mid_path, mid),) = local.mid_epoch_copies()
    assert mid.epochs == 1 and 40 <= mid.batches < BATCHES, mid

    # Both verified checkpoints are in S3 before the pod exits, sealed with the run's key.
    objects = _mirrored(s3_server, bucket)
    mid_name = f"{mid_path.name}.enc"
    assert set(objects) == {"epoch-0001.pt.enc", mid_name}, sorted(objects)
    for name, sealed in objects.items():
        plain = (local.directory / name.removesuffix(".enc")).read_bytes()
        assert sealed.startswith(crypto.MAGIC), name
        with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
            load_checkpoint_bytes(sealed)
        middle = len(plain) // 2
        assert plain[middle : middle + 256] not in sealed and plain[:4096] not in sealed, name
        opened = io.BytesIO()
        crypto.decrypt_stream(io.BytesIO(sealed), opened, key)
        assert opened.getvalue() == plain, name
    mirror_status = first.status()["checkpointMirror"]
    assert mirror_status["uri"] == f"s3://{bucket}/models/checkpoints/local/moving/{mid_name}"
    assert (mirror_status["epoch"], mirror_status["batch"]) == (mid.epochs, mid.batches)
    assert "failures" not in mirror_status

    # Node B: nothing of node A's data volume, the same annotations.
    shutil.rmtree(first.root)
    second = _node(tmp_path, "node-b", s3_server, bucket, key_file)
    code, log = second.run("run-2.log", timeout=600)
    assert code == 0, log[-4000:]
    assert f"restored checkpoint {mid_path.name} from s3://{bucket}/" in log, log[-3000:]
    assert f"resuming at batch {mid.batches} of {BATCHES} of epoch 2" in log, log[-3000:]
    resumed = second.status()["progress"]["resumedFrom"]
    assert resumed == {"epoch": 1, "batch": mid.batches, "source": mirror_status["uri"]}
    assert second.results_epochs() == [2], "epoch 1 was trained again"
    status = second.status()
    assert status["progress"]["step"] == "done" and status["lastCheckpoint"]["epoch"] == 2
    # Pruned like the local store: the end-of-epoch copies (node A's too), no mid-epoch one of a finished epoch.
    assert sorted(_mirrored(s3_server, bucket)) == ["epoch-0001.pt.enc", "epoch-0002.pt.enc"]
    node_b = CheckpointStore(second.run_dir)
    assert [p.name for p in node_b.copies()] == ["epoch-0002.pt"] and node_b.mid_epoch_copies() == []
    assert first.network_attempts() == "" and second.network_attempts() == ""
