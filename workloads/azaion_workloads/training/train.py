"""Training with ultralytics: fresh start or verified resume, progress callbacks.

The run directory is ultralytics' ``save_dir``: ``weights/{last,best}.pt``,
``results.csv``, ``args.yaml``; next to them ``checkpoints/`` (verified
copies, end-of-epoch and mid-epoch), ``position.json`` (how far training got,
rewritten after every batch, so the next attempt can say how much it trains
again) and ``training.json`` (written when training finished, so a retry
goes straight to export).

Mid-epoch checkpoints (:mod:`.resumable`) are written at SIGTERM and every
``checkpoint_interval_minutes`` of training, at the first batch boundary
right after an optimizer step.

With ``S3_MIRROR_CHECKPOINTS`` every kept checkpoint is also uploaded,
encrypted, in the background (:mod:`.mirror`), the last one waited for when
training ends or stops; on start a mirrored checkpoint newer than any local
one is restored first, so the run resumes on a node without the old volume.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azaion_contract.models.trainingrun import Artifacts, Metrics, ResumePoint
from azaion_contract.timefmt import rfc3339
from azaion_workloads.fsutil import atomic_copy, atomic_write_bytes, leftover_temp_files, sha256_file
from azaion_workloads.status import build
from azaion_workloads.training.checkpoints import Checkpoint, CheckpointStore, Position, truncate_results, try_load
from azaion_workloads.training.config import TrainingSettings
from azaion_workloads.training.errors import Interrupted, PermanentError
from azaion_workloads.training.progress import Progress, keepalive

if TYPE_CHECKING:
    from azaion_workloads.training.mirror import CheckpointMirror
    from azaion_workloads.training.tracking import MlflowTracker

log = logging.getLogger(__name__)

DONE_FILE = "training.json"
POSITION_FILE = "position.json"
#: Longest model and data set-up that keeps the liveness probe happy.
SETUP_KEEPALIVE_SECONDS = 2 * 3600

_METRIC_KEYS = {
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}
_LOSS_KEYS = {"box_loss": "box_loss", "cls_loss": "cls_loss", "dfl_loss": "dfl_loss"}


@dataclass(frozen=True)
class TrainingResult:
    """The training step's result: the best weights, their hash, the best epoch and its metrics."""

    best: Path
    sha256: str
    best_epoch: int | None
    metrics: dict[str, float]

    def artifacts(self, root: Path) -> Artifacts:
        """The ``status.artifacts`` fields of this result (paths relative to the data root ``root``)."""
        return build(Artifacts, model=str(self.best.relative_to(root)), model_sha256=self.sha256)


def resolve_device(requested: str) -> str:
    """``auto`` -> every CUDA device the container sees, else the CPU.

    The device plugin exposes exactly the GPUs the pod holds, so a run with
    ``resources.gpus: 2`` sees two and trains on both ("0,1": ultralytics runs DDP).
    """
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return ",".join(str(index) for index in range(max(torch.cuda.device_count(), 1)))


class _Callbacks:
    """ultralytics callbacks: heartbeat, stop at safe points, progress, verified copies."""

    def __init__(
        self,
        settings: TrainingSettings,
        progress: Progress,
        store: CheckpointStore,
        resume: Checkpoint | None,
        mirror: CheckpointMirror | None = None,
        resume_source: str | None = None,
        tracker: MlflowTracker | None = None,
    ):
        self.settings = settings
        self.progress = progress
        self.store = store
        self.resume = resume
        self.mirror = mirror
        self.tracker = tracker
        #: The S3 URI the resume checkpoint was restored from (None: it was on the data volume).
        self.resume_source = resume_source
        self.started = time.monotonic()
        self.last_saved = time.monotonic()
        self.first_epoch: int | None = None
        self.position = PositionFile(settings.run_dir / POSITION_FILE)
        #: How far the interrupted attempt got (read before this one rewrites it).
        self.reached = self.position.read()
        # ultralytics scans and caches every label before the first batch (minutes
        # on a large dataset) without a callback: beat from a thread until then.
        self.setup: keepalive | None = keepalive(progress, SETUP_KEEPALIVE_SECONDS).__enter__()

    def register(self, model: Any) -> None:
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_batch_end", self.on_batch_end)
        model.add_callback("on_val_batch_end", self.on_val_batch_end)
        model.add_callback("on_model_save", self.on_model_save)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def on_train_start(self, trainer: Any) -> None:
        self.started = self.last_saved = time.monotonic()  # the ETA counts epochs, not model and data set-up
        self.end_setup()  # batches beat from now on
        _report_resume(self.progress, trainer, self.resume, self.reached, self.resume_source)

    def end_setup(self) -> None:
        if self.setup is not None:
            self.setup.__exit__()
            self.setup = None

    def on_batch_end(self, trainer: Any) -> None:
        self.progress.beat()
        where = f"epoch {trainer.epoch + 1}, batch {trainer.batch_index + 1}"
        if trainer.fast_forwarding:
            # Passing over batches the checkpoint already holds: it is still the resume point.
            self.progress.stop.check(where)
            return
        self.position.write(Position(trainer.epoch, trainer.batch_index + 1))
        if not trainer.mid_epoch_capable:
            # The newest verified checkpoint stays the resume point; the partial epoch is redone.
            self.progress.stop.check(where)
            return
        interval = self.settings.checkpoint_interval_minutes * 60
        due = self.progress.stop.requested or (interval > 0 and time.monotonic() - self.last_saved >= interval)
        if due and trainer.at_step_boundary:
            self.save_mid_epoch(trainer)
            self.progress.stop.check(where)

    def save_mid_epoch(self, trainer: Any) -> None:
        started = time.monotonic()
        checkpoint = self.store.keep_mid_epoch(trainer.mid_epoch_checkpoint())
        self.last_saved = time.monotonic()
        log.info(
            "mid-epoch checkpoint %s (%.2f s)",
            checkpoint.path.relative_to(self.settings.run_dir),
            self.last_saved - started,
        )
        self.report_checkpoint(checkpoint)

    def report_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.progress.checkpoint(
            epoch=checkpoint.epochs_done,
            batch=checkpoint.batch,
            path=str(checkpoint.path.relative_to(self.settings.layout.root)),
            sha256=checkpoint.sha256,
            saved_at=rfc3339(),
        )
        if self.mirror is not None:
            self.mirror.submit(checkpoint)  # uploaded in the background; training does not wait

    def on_val_batch_end(self, _validator: Any) -> None:
        self.progress.beat()

    def on_model_save(self, trainer: Any) -> None:
        self.report_checkpoint(self.store.keep_verified(trainer.last, trainer.epoch))
        self.last_saved = time.monotonic()

    def on_fit_epoch_end(self, trainer: Any) -> None:
        if trainer.epoch >= trainer.epochs:
            return  # the extra call for the final validation of best.pt
        if self.first_epoch is None:
            self.first_epoch = trainer.epoch
        done = trainer.epoch + 1
        per_epoch = (time.monotonic() - self.started) / max(1, done - self.first_epoch)
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        metrics = {key: _float(trainer.metrics, source) for key, source in _METRIC_KEYS.items()}
        metrics.update({key: _float(losses, f"train/{src}") for key, src in _LOSS_KEYS.items()})
        best_epoch = getattr(getattr(trainer, "stopper", None), "best_epoch", None)
        if self.tracker is not None:  # queued: the server never holds up the next epoch
            self.tracker.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=done)
        self.progress.step(
            "training",
            epoch=done,
            epochs=trainer.epochs,
            percent=round(100.0 * done / trainer.epochs, 2),
            eta_seconds=int(per_epoch * (trainer.epochs - done)),
            metrics=build(Metrics, **{k: v for k, v in metrics.items() if v is not None}),
            **({"best_epoch": int(best_epoch)} if best_epoch else {}),
        )
        self.progress.stop.check(f"end of epoch {done}")


class PositionFile:
    """How far training got: rewritten after every batch, read by the next attempt.

    Not fsynced (it is rewritten a thousand times an hour): a killed process
    leaves it intact; after a machine crash it may be older, or unreadable, and
    then the next attempt only cannot say how much it trains again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._temp = path.with_name(f".{path.name}.tmp")

    def write(self, position: Position) -> None:
        self._temp.write_text(json.dumps({"epochs": position.epochs, "batches": position.batches}))
        os.replace(self._temp, self.path)

    def read(self) -> Position | None:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            return Position(int(record["epochs"]), int(record["batches"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _redone(reached: Position | None, resumed: Position, batches_per_epoch: int) -> int | None:
    """Batches trained before the interruption that are trained again from ``resumed``."""
    if reached is None or reached < resumed:
        return None
    return (reached.epochs - resumed.epochs) * batches_per_epoch + reached.batches - resumed.batches


def _float(source: dict[str, Any], key: str) -> float | None:
    value = source.get(key)
    try:
        return round(float(value), 6) if value is not None else None
    except (TypeError, ValueError):
        return None


def train(
    settings: TrainingSettings,
    data_yaml: Path,
    progress: Progress,
    mirror: CheckpointMirror | None = None,
    tracker: MlflowTracker | None = None,
) -> TrainingResult:
    """Train (or resume, or skip when finished) and return the best model.

    With ``mirror`` every kept checkpoint is also uploaded to S3, and a mirrored
    checkpoint newer than the newest local one (or any, when there is no local
    one: another node) is restored and resumed from. With ``tracker`` every
    epoch's metrics go to MLflow.
    """
    run_dir = settings.run_dir
    done_file = run_dir / DONE_FILE
    store = CheckpointStore(run_dir)
    finished = _finished(done_file, store.best)
    if finished is not None:
        log.info("training already finished (best model %s); skipping", finished.best)
        return finished

    from ultralytics import YOLO

    device = resolve_device(settings.device)
    common: dict[str, Any] = {
        "data": str(data_yaml),
        "imgsz": settings.imgsz,
        "batch": settings.batch_size,
        "device": device,
        "workers": settings.workers,
        "save_period": settings.save_period,
        "save_dir": str(run_dir),
        "verbose": True,
        "patience": settings.patience,
    }
    for leftover in leftover_temp_files(run_dir):
        leftover.unlink(missing_ok=True)  # a checkpoint copy cut short by a kill

    resume = store.newest_loadable()
    resume_source: str | None = None
    if mirror is not None:
        restored = mirror.restore(store, resume.position if resume else None, progress.beat)
        if restored is not None:
            resume, resume_source = restored.checkpoint, restored.uri
    done_epochs = resume.epochs_done if resume else 0
    progress.step(
        "training",
        epoch=done_epochs,
        epochs=settings.epochs,
        percent=round(100.0 * min(done_epochs, settings.epochs) / settings.epochs, 2),
    )
    if resume is not None and resume.epochs_done >= settings.epochs:
        # Every epoch ran; the process died in the final evaluation, which
        # rewrites best.pt in place. Keep best.pt if it loads, else the copy.
        if try_load(store.best)[0] is None:
            log.warning("best.pt does not load; using the verified checkpoint %s", resume.path)
            atomic_copy(resume.path, store.best)
        return _record(done_file, store.best, None, {})
    from azaion_workloads.training.resumable import ResumableTrainer

    callbacks = _Callbacks(settings, progress, store, resume, mirror, resume_source, tracker)
    try:
        if resume is not None:
            dropped = truncate_results(run_dir / "results.csv", resume.epochs_done)
            log.info(
                "resuming at epoch %d of %d%s from %s%s%s",
                resume.epochs_done + 1,
                settings.epochs,
                f", batch {resume.batch}" if resume.batch else "",
                resume.path.relative_to(run_dir),
                f" (restored from {resume_source})" if resume_source else "",
                f" (dropped {dropped} results row(s) of epochs trained after it)" if dropped else "",
            )
            model = YOLO(str(resume.path))
            callbacks.register(model)
            model.train(resume=str(resume.path), trainer=ResumableTrainer, **common)
        else:
            # No usable checkpoint: start over, without rows of an earlier try.
            (run_dir / "results.csv").unlink(missing_ok=True)
            log.info("starting training from %s for %d epochs on %s", settings.model, settings.epochs, device)
            try:
                model = YOLO(settings.model_source())
            except FileNotFoundError as error:  # an unknown model YAML name: retrying cannot help
                raise PermanentError(f"TRAINING_MODEL: {error}") from None
            callbacks.register(model)
            model.train(
                epochs=settings.epochs,
                exist_ok=True,
                project=str(run_dir.parent),
                name=run_dir.name,
                optimizer=settings.optimizer,
                trainer=ResumableTrainer,
                **settings.extra_args,
                **common,
            )
    finally:
        callbacks.end_setup()
        if mirror is not None:
            # The last checkpoint (a SIGTERM's mid-epoch one above all) is the one another node resumes from.
            mirror.drain(beat=progress.beat)
            mirror.close()
    if progress.stop.requested:
        raise Interrupted("stopped after training")
    if not store.best.exists():
        raise RuntimeError(f"training ended without {store.best}")
    trainer = model.trainer
    metrics = {k: _float(trainer.metrics or {}, src) for k, src in _METRIC_KEYS.items()}
    best_epoch = getattr(getattr(trainer, "stopper", None), "best_epoch", None)
    return _record(
        done_file,
        store.best,
        int(best_epoch) if best_epoch else None,
        {k: v for k, v in metrics.items() if v is not None},
    )


def _report_resume(
    progress: Progress, trainer: Any, resume: Checkpoint | None, reached: Position | None, source: str | None = None
) -> None:
    """Say in status where this attempt starts, how much of the last attempt's work it redoes, and
    (``source``) the S3 URI of the mirrored checkpoint it was restored from."""
    if resume is None:
        start = Position(0)
    elif getattr(trainer, "resumed_from", None) is not None:
        start = trainer.resumed_from
    else:
        start = Position(resume.epochs_done)  # at an epoch boundary (or a mid-epoch one that no longer fits)
    redone = _redone(reached, start, len(trainer.train_loader))
    if redone:
        log.info("the interrupted attempt had trained %d batch(es) past this point; they are trained again", redone)
    fields: dict[str, Any] = {"epoch": start.epochs, "batch": start.batches}
    if redone is not None:
        fields["redone_batches"] = redone
    if os.environ.get("POD_NAME"):
        fields["pod"] = os.environ["POD_NAME"]
    if source is not None and resume is not None:
        fields["source"] = source
    progress.step("training", resumed_from=build(ResumePoint, **fields))


def _record(done_file: Path, best: Path, best_epoch: int | None, metrics: dict[str, float]) -> TrainingResult:
    """Write ``training.json``: from now on a retry skips training."""
    result = TrainingResult(best, sha256_file(best), best_epoch, metrics)
    record = {
        "best": best.name,
        "sha256": result.sha256,
        "bestEpoch": best_epoch,
        "metrics": metrics,
        "finishedAt": rfc3339(),
    }
    atomic_write_bytes(done_file, json.dumps(record, indent=2).encode())
    return result


def _finished(done_file: Path, best: Path) -> TrainingResult | None:
    """The recorded result when training finished and best.pt is still intact."""
    try:
        record = json.loads(done_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not best.exists() or sha256_file(best) != record.get("sha256"):
        log.warning("%s does not match %s; training again", best, done_file)
        return None
    return TrainingResult(best, record["sha256"], record.get("bestEpoch"), record.get("metrics", {}))
