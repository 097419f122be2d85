"""The checkpoint mirror's pure parts: key names, pruning, the superseding queue, choosing what to restore.

The S3 client here is an in-memory stand-in with the four calls the mirror
makes; tests/integration/test_training_mirror.py runs the same code against a
real S3 server and real training.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from azaion_workloads.training import crypto
from azaion_workloads.training.checkpoints import (
    KEEP_COPIES,
    MID_EPOCH_KEY,
    Checkpoint,
    CheckpointStore,
    Position,
    load_checkpoint_bytes,
    name_position,
)
from azaion_workloads.training.mirror import (
    CheckpointMirror,
    LatestSlot,
    mirror_prefix,
    object_name,
    object_position,
    stale_positions,
)

pytestmark = pytest.mark.unit

torch = pytest.importorskip("torch")

KEY = bytes(range(32))
PREFIX = "models/checkpoints/team/run-1/"


def _checkpoint(epochs: int, batches: int = 0) -> bytes:
    """Checkpoint bytes at ``Position(epochs, batches)`` (ultralytics' epoch index is epochs - 1)."""
    content: dict[str, Any] = {"epoch": epochs - 1, "ema": {"w": torch.full((4,), 7.25)}, "optimizer": {}}
    if batches:
        content = {**content, "epoch": epochs, MID_EPOCH_KEY: {"epoch": epochs, "done": batches}}
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def _sealed(data: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), out, key, crypto.key_fingerprint(key))
    return out.getvalue()


class MemoryS3:
    """The calls the mirror makes, on a dict; ``fail_uploads`` makes uploads raise."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.uploaded: list[str] = []
        self.fail_uploads = False
        self.gate: threading.Event | None = None  # uploads wait for it when set
        self.entered = threading.Event()  # set when an upload starts

    def upload_file(self, filename: str, bucket: str, key: str, ExtraArgs: Any = None, Config: Any = None) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail_uploads:
            raise ConnectionError("the store is unreachable")
        self.objects[key] = Path(filename).read_bytes()
        self.metadata[key] = dict((ExtraArgs or {}).get("Metadata", {}))
        self.uploaded.append(key)

    def download_file(self, bucket: str, key: str, filename: str, Config: Any = None, Callback: Any = None) -> None:
        Path(filename).write_bytes(self.objects[key])

    def delete_object(self, Bucket: str, Key: str) -> None:
        self.objects.pop(Key, None)

    def get_paginator(self, _name: str) -> MemoryS3:
        return self

    def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
        return [{"Contents": [{"Key": key} for key in sorted(self.objects) if key.startswith(Prefix)]}]


def _mirror(client: MemoryS3, key: bytes = KEY, **kwargs: Any) -> CheckpointMirror:
    return CheckpointMirror(client, "bucket", "models", "team", "run-1", key, crypto.key_fingerprint(key), **kwargs)


def test_key_names() -> None:
    assert mirror_prefix("models", "team", "run-1") == PREFIX
    assert mirror_prefix("", "team", "run-1") == "checkpoints/team/run-1/"
    assert _mirror(MemoryS3()).object_key("epoch-0003.pt") == PREFIX + "epoch-0003.pt.enc"
    assert object_name("epoch-0002-batch-000017.pt") == "epoch-0002-batch-000017.pt.enc"
    assert object_position("epoch-0003.pt.enc") == Position(3)
    assert object_position("epoch-0002-batch-000017.pt.enc") == Position(2, 17)
    for other in ("epoch-0003.pt", "last.pt.enc", "epoch-3.pt.enc", "epoch-0003.pt.enc.tmp", ".azaion-tmp-x.enc"):
        assert object_position(other) is None, other
    assert name_position("epoch-0012.pt") == Position(12) and name_position("best.pt") is None


def test_pruning_keeps_what_the_local_store_keeps() -> None:
    ends = [Position(n) for n in range(1, 6)]
    # After an end-of-epoch upload: the newest KEEP_COPIES copies, no mid-epoch one of a finished epoch.
    assert stale_positions([*ends, Position(4, 30)], Position(5)) == [Position(4, 30), Position(2), Position(1)]
    assert KEEP_COPIES == 3
    # After a mid-epoch upload: the end-of-epoch copies stay, only the uploaded mid-epoch one of its kind.
    assert stale_positions([*ends, Position(5, 10), Position(5, 40)], Position(5, 40)) == [
        Position(5, 10),
        Position(2),
        Position(1),
    ]
    # Past the upload: what an abandoned timeline left (this attempt resumed from an older point).
    assert stale_positions([Position(1), Position(2), Position(3), Position(3, 5)], Position(2)) == [
        Position(3, 5),
        Position(3),
    ]
    assert stale_positions([Position(1)], Position(1)) == []


def test_the_slot_keeps_only_the_newest_waiting_item() -> None:
    slot: LatestSlot[str] = LatestSlot()
    assert slot.put("a") is None
    assert slot.put("b") == "a"  # superseded before anyone took it
    assert slot.take() == "b"
    assert not slot.wait_idle(0.01)  # taken, not done
    slot.done()
    assert slot.wait_idle(0.01)
    slot.close()
    assert slot.take() is None


def test_a_newer_checkpoint_supersedes_a_waiting_one_and_uploads_are_encrypted(tmp_path: Path) -> None:
    client = MemoryS3()
    client.gate = threading.Event()
    reports: list[dict[str, Any]] = []
    mirror = _mirror(client, on_status=lambda **fields: reports.append(fields))
    store = CheckpointStore(tmp_path)
    kept = []
    for epochs in (1, 2, 3):
        data = _checkpoint(epochs)
        path = store.copy_path(epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        kept.append(Checkpoint(path, epochs - 1, hashlib.sha256(data).hexdigest()))
    mirror.submit(kept[0])
    # The first upload is in work (held at the gate); the second waits and is superseded by the third.
    assert client.entered.wait(10)
    mirror.submit(kept[1])
    mirror.submit(kept[2])
    client.gate.set()
    assert mirror.drain(timeout=10)
    mirror.close()
    assert client.uploaded == [PREFIX + "epoch-0001.pt.enc", PREFIX + "epoch-0003.pt.enc"]
    assert [r["epoch"] for r in reports] == [1, 3] and reports[-1]["uri"] == f"s3://bucket/{PREFIX}epoch-0003.pt.enc"
    sealed = client.objects[PREFIX + "epoch-0003.pt.enc"]
    plain = kept[2].path.read_bytes()
    assert sealed.startswith(crypto.MAGIC) and plain not in sealed and plain[-4096:] not in sealed
    with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
        load_checkpoint_bytes(sealed)
    assert client.metadata[PREFIX + "epoch-0003.pt.enc"]["sha256"] == kept[2].sha256


def test_a_failed_upload_is_reported_and_training_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    client = MemoryS3()
    client.fail_uploads = True
    reports: list[dict[str, Any]] = []
    mirror = _mirror(client, on_status=lambda **fields: reports.append(fields))
    path = tmp_path / "epoch-0001.pt"
    path.write_bytes(_checkpoint(1))
    with caplog.at_level(logging.WARNING):
        mirror.submit(Checkpoint(path, 0, "sha"))
        assert mirror.drain(timeout=10)
    assert mirror.failures == 1 and client.objects == {}
    (report,) = reports
    assert report["failures"] == 1 and "unreachable" in report["last_error"] and report["last_error_at"]
    assert "mirroring checkpoint epoch-0001.pt failed" in caplog.text and "training goes on" in caplog.text
    # A later one goes up once the store is back.
    client.fail_uploads = False
    mirror.submit(Checkpoint(path, 0, "sha"))
    assert mirror.drain(timeout=10)
    assert list(client.objects) == [PREFIX + "epoch-0001.pt.enc"]


def test_restore_takes_the_newest_valid_copy_and_skips_damaged_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = MemoryS3()
    good = _checkpoint(2)
    client.objects = {
        PREFIX + "epoch-0001.pt.enc": _sealed(_checkpoint(1)),
        PREFIX + "epoch-0002.pt.enc": _sealed(good),
        PREFIX + "epoch-0003.pt.enc": _sealed(_checkpoint(3))[:-40],  # cut short
        PREFIX + "epoch-0003-batch-000009.pt.enc": _sealed(_checkpoint(3, 9), os.urandom(32)),  # another key
        PREFIX + "epoch-0004.pt.enc": _sealed(_checkpoint(2)),  # not what its name says
        "models/checkpoints/team/run-10/epoch-0009.pt.enc": _sealed(_checkpoint(9)),  # another run
        PREFIX + "notes.txt": b"not a checkpoint",
    }
    store = CheckpointStore(tmp_path)
    with caplog.at_level(logging.INFO):
        restored = _mirror(client).restore(store, None)
    assert restored is not None
    assert restored.uri == f"s3://bucket/{PREFIX}epoch-0002.pt.enc"
    assert restored.checkpoint.path == store.copy_path(2) and restored.checkpoint.position == Position(2)
    assert store.copy_path(2).read_bytes() == good
    assert restored.checkpoint.sha256 == hashlib.sha256(good).hexdigest()
    assert store.newest_loadable() == restored.checkpoint  # the local store sees it as its own
    for skipped in ("epoch-0004.pt.enc", "epoch-0003-batch-000009.pt.enc", "epoch-0003.pt.enc"):
        assert f"{skipped} cannot be restored" in caplog.text, skipped
    assert "holds Position(epochs=2, batches=0), not Position(epochs=4" in caplog.text
    assert "wrong key" in caplog.text and "trying an older one" in caplog.text


def test_restore_only_what_is_newer_than_the_local_checkpoint(tmp_path: Path) -> None:
    client = MemoryS3()
    client.objects = {PREFIX + "epoch-0002.pt.enc": _sealed(_checkpoint(2))}
    store = CheckpointStore(tmp_path)
    assert _mirror(client).restore(store, Position(2)) is None
    assert _mirror(client).restore(store, Position(3)) is None
    assert not store.directory.exists()
    mid = _mirror(client).restore(store, Position(1, 50))
    assert mid is not None and mid.checkpoint.path == store.copy_path(2)
    client.objects[PREFIX + "epoch-0002-batch-000004.pt.enc"] = _sealed(_checkpoint(2, 4))
    newest = _mirror(client).restore(store, Position(2))
    assert newest is not None and newest.checkpoint.path == store.mid_epoch_path(Position(2, 4))
    assert newest.checkpoint.position == Position(2, 4) and newest.checkpoint.epoch == 1


def test_an_unreachable_mirror_leaves_the_local_checkpoints(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Down(MemoryS3):
        def paginate(self, Bucket: str, Prefix: str) -> list[dict[str, Any]]:
            raise ConnectionError("no route to host")

    with caplog.at_level(logging.WARNING):
        assert _mirror(Down()).restore(CheckpointStore(tmp_path), None) is None
    assert "cannot list the checkpoint mirror" in caplog.text and "local checkpoints" in caplog.text


def test_mirroring_is_a_setting_that_needs_a_bucket(tmp_path: Path) -> None:
    from azaion_workloads.training.config import EnvError, load_settings

    identity = {"AZAION_ROOT_DIR": str(tmp_path), "AZAION_RESOURCE_NAME": "run-1", "AZAION_RESOURCE_NAMESPACE": "team"}
    with pytest.raises(EnvError, match="S3_MIRROR_CHECKPOINTS needs S3_BUCKET"):
        load_settings({**identity, "S3_MIRROR_CHECKPOINTS": "true"})
    assert load_settings(identity).mirror_checkpoints is False
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    settings = load_settings(
        {**identity, "S3_BUCKET": "models", "S3_MIRROR_CHECKPOINTS": "true", "ENCRYPTION_KEY_FILE": str(key_file)}
    )
    assert settings.mirror_checkpoints is True

    from azaion_workloads.heartbeat import Heartbeat
    from azaion_workloads.status import FileStatusReporter
    from azaion_workloads.training.pipeline import Pipeline
    from azaion_workloads.training.progress import Progress, StopFlag

    progress = Progress(FileStatusReporter(tmp_path / "status.json"), Heartbeat(tmp_path / "hb"), StopFlag())
    mirror = Pipeline(settings, progress).checkpoint_mirror()
    assert mirror is not None and mirror.bucket == "models" and mirror.prefix == PREFIX
    assert mirror.key == KEY and mirror.key_id == crypto.key_fingerprint(KEY)
    off = load_settings({**identity, "S3_BUCKET": "models", "ENCRYPTION_KEY_FILE": str(key_file)})
    assert Pipeline(off, progress).checkpoint_mirror() is None
