"""Verified checkpoints mirrored to S3, encrypted, so a run can resume on another node.

With ``S3_MIRROR_CHECKPOINTS`` (``publish.s3.mirrorCheckpoints``) every
checkpoint the :class:`~.checkpoints.CheckpointStore` keeps, end-of-epoch and
mid-epoch, is also uploaded to the run's bucket::

    <prefix>/checkpoints/<namespace>/<run>/epoch-NNNN.pt.enc
    <prefix>/checkpoints/<namespace>/<run>/epoch-NNNN-batch-BBBBBB.pt.enc

A checkpoint holds the weights in the clear, so it is sealed first with the
run's model key (the :mod:`.crypto` format; the object's metadata carries the
plaintext's sha256 and the key id) and only the sealed file leaves the pod.

Uploads run on one background thread, one at a time: training never waits
for S3. A checkpoint kept while another one waits for its upload replaces the
waiting one (only the newest matters). A failed upload (after boto3's
retries) is logged and counted in ``status.checkpointMirror``; training goes
on. After each upload the mirror is pruned like the local store: the newest
:data:`~.checkpoints.KEEP_COPIES` end-of-epoch copies and the uploaded
mid-epoch one stay; objects past the uploaded position, left by an attempt
whose timeline this one abandoned when it resumed from an older point, go.
The copies stay after a successful run, as the local ones do.

On start, :meth:`CheckpointMirror.restore` lists the run's prefix and, when
the mirror holds a checkpoint newer than the newest one on the data volume (or
the volume holds none, as on a node that does not mount it), downloads it,
decrypts it, verifies it as the local store does (it loads, and holds the
position its name gives), writes it into ``checkpoints/`` atomically and
resumes from it; a damaged or undecryptable object is logged and the next
older one tried.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from azaion_contract.timefmt import rfc3339
from azaion_workloads.fsutil import TEMP_PREFIX, atomic_write_bytes
from azaion_workloads.training import crypto
from azaion_workloads.training.checkpoints import (
    KEEP_COPIES,
    Checkpoint,
    CheckpointStore,
    Position,
    held_position,
    load_checkpoint_bytes,
    name_position,
)

log = logging.getLogger(__name__)

SUFFIX = ".enc"
#: How long the end of training waits for the last upload (a SIGTERM's mid-epoch checkpoint above all).
DRAIN_SECONDS = 120.0

T = TypeVar("T")


def mirror_prefix(prefix: str, namespace: str, name: str) -> str:
    """The run's key prefix in the bucket, with its trailing ``/``."""
    return "/".join(part for part in (prefix, "checkpoints", namespace, name) if part) + "/"


def object_name(file_name: str) -> str:
    """The mirrored object's name for a verified copy's file name."""
    return file_name + SUFFIX


def object_position(name: str) -> Position | None:
    """The position a mirrored object's name gives; None for anything else under the prefix."""
    if not name.endswith(SUFFIX):
        return None
    return name_position(name.removesuffix(SUFFIX))


def stale_positions(present: Iterable[Position], uploaded: Position) -> list[Position]:
    """The mirrored positions to delete once ``uploaded`` is up, newest first.

    Like the local store: the newest :data:`KEEP_COPIES` end-of-epoch copies up
    to ``uploaded`` stay, and of the mid-epoch ones only ``uploaded`` itself.
    Anything past ``uploaded`` belongs to a timeline this attempt left (it
    resumed from an older point) and goes too.
    """
    present = set(present)
    stale = {p for p in present if p > uploaded or (p.batches and p != uploaded)}
    ends = sorted((p for p in present if p.batches == 0 and p <= uploaded), reverse=True)
    stale.update(ends[KEEP_COPIES:])
    return sorted(stale, reverse=True)


class LatestSlot(Generic[T]):
    """A queue of one: :meth:`put` replaces what still waits, :meth:`take` blocks for the next item.

    It also knows whether the taker is busy with an item, so :meth:`wait_idle`
    can wait for the work, not only the queue, to be done.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._item: T | None = None
        self._busy = False
        self._closed = False

    def put(self, item: T) -> T | None:
        """Queue ``item``; return the waiting item it superseded, if any."""
        with self._changed:
            superseded, self._item = self._item, item
            self._changed.notify_all()
            return superseded

    def take(self) -> T | None:
        """The next item (the taker is busy until :meth:`done`); None once closed and empty."""
        with self._changed:
            self._changed.wait_for(lambda: self._item is not None or self._closed)
            item, self._item = self._item, None
            self._busy = item is not None
            return item

    def done(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing waits and nothing is in work; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._item is None and not self._busy, timeout)


@dataclass(frozen=True)
class Restored:
    """A checkpoint restored from the mirror into the local store, and where it came from."""

    checkpoint: Checkpoint
    uri: str


class CheckpointMirror:
    """Uploads kept checkpoints in the background (:meth:`submit`) and restores the newest (:meth:`restore`)."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        namespace: str,
        name: str,
        key: bytes,
        key_id: str,
        *,
        transfer: Any | None = None,
        on_status: Callable[..., None] | None = None,
        temp_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = mirror_prefix(prefix, namespace, name)
        self.key, self.key_id = key, key_id
        if transfer is None:
            from boto3.s3.transfer import TransferConfig

            from azaion_workloads.training.publish import MiB

            transfer = TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4)
        self.transfer = transfer
        self.on_status = on_status or (lambda **_fields: None)
        self.temp_dir = temp_dir
        self.failures = 0
        self._slot: LatestSlot[Checkpoint] = LatestSlot()
        self._thread: threading.Thread | None = None

    def object_key(self, file_name: str) -> str:
        return self.prefix + object_name(file_name)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # Uploading -------------------------------------------------------------

    def submit(self, checkpoint: Checkpoint) -> None:
        """Mirror ``checkpoint`` soon (never blocks); a still waiting older one is dropped."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
            self._thread.start()
        superseded = self._slot.put(checkpoint)
        if superseded is not None:
            log.info("checkpoint %s not mirrored: superseded by %s", superseded.path.name, checkpoint.path.name)

    def drain(self, timeout: float = DRAIN_SECONDS, beat: Callable[[], None] = lambda: None) -> bool:
        """Wait (beating ``beat``) for the pending upload; False, logged, when ``timeout`` passed first."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while not self._slot.wait_idle(min(2.0, max(0.0, deadline - time.monotonic()))):
            beat()
            if time.monotonic() >= deadline:
                log.warning("the last checkpoint upload did not finish within %.0f s; leaving it", timeout)
                return False
        return True

    def close(self) -> None:
        """Stop the upload thread once its current upload is done (a waiting one is still taken)."""
        self._slot.close()

    def _work(self) -> None:
        while (checkpoint := self._slot.take()) is not None:
            try:
                self.upload(checkpoint)
            except FileNotFoundError:
                log.info("checkpoint %s is gone before its upload (superseded); skipped", checkpoint.path.name)
            except Exception as error:  # network, credentials, a full bucket: training goes on
                self.failures += 1
                detail = f"{type(error).__name__}: {error}"
                log.warning("mirroring checkpoint %s failed (%s); training goes on", checkpoint.path.name, detail)
                self._report(failures=self.failures, last_error=detail[:1000], last_error_at=rfc3339())
            finally:
                self._slot.done()

    def upload(self, checkpoint: Checkpoint) -> str:
        """Seal ``checkpoint`` with the run's key, upload it, prune older copies; return its URI."""
        started = time.monotonic()
        key = self.object_key(checkpoint.path.name)
        with (
            checkpoint.path.open("rb") as source,
            tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX, suffix=SUFFIX, dir=self.temp_dir) as sealed,
        ):
            crypto.encrypt_stream(source, sealed, self.key, self.key_id)
            sealed.flush()
            size = sealed.tell()
            self.client.upload_file(
                sealed.name,
                self.bucket,
                key,
                ExtraArgs={
                    "Metadata": {"sha256": checkpoint.sha256, "key-id": self.key_id},
                    "ContentType": "application/octet-stream",
                },
                Config=self.transfer,
            )
        uri = self.uri(key)
        log.info(
            "mirrored checkpoint %s to %s (%d bytes, %.1f s)",
            checkpoint.path.name,
            uri,
            size,
            time.monotonic() - started,
        )
        self._report(uri=uri, epoch=checkpoint.epochs_done, batch=checkpoint.batch, mirrored_at=rfc3339())
        self.prune(checkpoint.position)
        return uri

    def prune(self, uploaded: Position) -> list[str]:
        """Delete the mirrored copies :func:`stale_positions` names; return their keys."""
        present = self.listing()
        stale = [present[position] for position in stale_positions(present, uploaded)]
        for key in stale:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        if stale:
            log.info("pruned %d older mirrored checkpoint(s)", len(stale))
        return stale

    def _report(self, **fields: Any) -> None:
        try:
            self.on_status(**fields)
        except Exception as error:  # reporting must not stop the uploads either
            log.warning("checkpoint mirror status report failed: %s", error)

    # Restoring -------------------------------------------------------------

    def listing(self) -> dict[Position, str]:
        """The run's mirrored checkpoints: position -> object key."""
        found: dict[Position, str] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                position = object_position(item["Key"].removeprefix(self.prefix))
                if position is not None:
                    found[position] = item["Key"]
        return found

    def fetch(self, key: str, beat: Callable[[], None] = lambda: None) -> bytes:
        """Download and decrypt one mirrored object; raise when it does not decrypt."""
        with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=self.temp_dir) as staging:
            sealed = Path(staging) / object_name("checkpoint")
            self.client.download_file(self.bucket, key, str(sealed), Config=self.transfer, Callback=lambda _n: beat())
            plain = io.BytesIO()
            with sealed.open("rb") as source:
                crypto.decrypt_stream(source, plain, self.key, on_chunk=lambda _n: beat())
        return plain.getvalue()

    def restore(
        self, store: CheckpointStore, newer_than: Position | None, beat: Callable[[], None] = lambda: None
    ) -> Restored | None:
        """Bring the newest mirrored checkpoint past ``newer_than`` into ``store``; None when there is none.

        Candidates are tried newest first; one that does not download, decrypt
        or load, or that holds another position than its name says, is logged
        and skipped. A listing that fails (after boto3's retries) is logged and
        the run goes on with the local checkpoints.
        """
        try:
            present = self.listing()
        except Exception as error:
            log.warning(
                "cannot list the checkpoint mirror %s (%s: %s); going on with the local checkpoints",
                self.uri(self.prefix),
                type(error).__name__,
                error,
            )
            return None
        candidates = sorted((p for p in present if newer_than is None or p > newer_than), reverse=True)
        if not candidates:
            if present:
                log.info("the checkpoint mirror holds nothing newer than the local checkpoint %s", newer_than)
            return None
        for position in candidates:
            key = present[position]
            uri = self.uri(key)
            try:
                data = self.fetch(key, beat)
                held = held_position(load_checkpoint_bytes(data))
                if held != position:
                    raise ValueError(f"it holds {held}, not {position}")
            except Exception as error:  # damaged, truncated, sealed with another key, unreachable
                log.warning(
                    "mirrored checkpoint %s cannot be restored (%s: %s); trying an older one",
                    uri,
                    type(error).__name__,
                    error,
                )
                continue
            target = store.path_at(position)
            atomic_write_bytes(target, data)
            log.info("restored checkpoint %s from %s", target.name, uri)
            checkpoint = Checkpoint(target, position.epochs - 1, hashlib.sha256(data).hexdigest(), position.batches)
            return Restored(checkpoint, uri)
        log.warning("no mirrored checkpoint of %s could be restored", self.uri(self.prefix))
        return None
