"""Training with ultralytics: fresh start or verified resume, progress callbacks.

The run directory is ultralytics' ``save_dir``: ``weights/{last,best}.pt``,
``results.csv``, ``args.yaml``; next to them ``checkpoints/`` (verified
copies) and ``training.json`` (written when training finished, so a retry
goes straight to export).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_contract.models.trainingrun import Artifacts, Metrics
from azaion_contract.timefmt import rfc3339
from azaion_workloads.fsutil import atomic_copy, atomic_write_bytes, leftover_temp_files, sha256_file
from azaion_workloads.status import build
from azaion_workloads.training.checkpoints import CheckpointStore, truncate_results, try_load
from azaion_workloads.training.config import TrainingSettings
from azaion_workloads.training.errors import Interrupted, PermanentError
from azaion_workloads.training.progress import Progress, keepalive

log = logging.getLogger(__name__)

DONE_FILE = "training.json"
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

    def __init__(self, settings: TrainingSettings, progress: Progress, store: CheckpointStore):
        self.settings = settings
        self.progress = progress
        self.store = store
        self.started = time.monotonic()
        self.first_epoch: int | None = None
        # ultralytics scans and caches every label before the first batch (minutes
        # on a large dataset) without a callback: beat from a thread until then.
        self.setup: keepalive | None = keepalive(progress, SETUP_KEEPALIVE_SECONDS).__enter__()

    def register(self, model: Any) -> None:
        model.add_callback("on_train_start", self.on_train_start)
        model.add_callback("on_train_batch_end", self.on_batch_end)
        model.add_callback("on_val_batch_end", self.on_val_batch_end)
        model.add_callback("on_model_save", self.on_model_save)
        model.add_callback("on_fit_epoch_end", self.on_fit_epoch_end)

    def on_train_start(self, _trainer: Any) -> None:
        self.started = time.monotonic()  # the ETA counts epochs, not model and data set-up
        self.end_setup()  # batches beat from now on

    def end_setup(self) -> None:
        if self.setup is not None:
            self.setup.__exit__()
            self.setup = None

    def on_batch_end(self, trainer: Any) -> None:
        self.progress.beat()
        # Between batches nothing is half-written: the newest verified
        # checkpoint stays the resume point and the partial epoch is redone.
        self.progress.stop.check(f"epoch {trainer.epoch + 1}, between batches")

    def on_val_batch_end(self, _validator: Any) -> None:
        self.progress.beat()

    def on_model_save(self, trainer: Any) -> None:
        checkpoint = self.store.keep_verified(trainer.last, trainer.epoch)
        self.progress.checkpoint(
            epoch=checkpoint.epochs_done,
            path=str(checkpoint.path.relative_to(self.settings.layout.root)),
            sha256=checkpoint.sha256,
            saved_at=rfc3339(),
        )

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


def _float(source: dict[str, Any], key: str) -> float | None:
    value = source.get(key)
    try:
        return round(float(value), 6) if value is not None else None
    except (TypeError, ValueError):
        return None


def train(settings: TrainingSettings, data_yaml: Path, progress: Progress) -> TrainingResult:
    """Train (or resume, or skip when finished) and return the best model."""
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
    callbacks = _Callbacks(settings, progress, store)
    try:
        if resume is not None:
            dropped = truncate_results(run_dir / "results.csv", resume.epochs_done)
            log.info(
                "resuming at epoch %d of %d from %s%s",
                resume.epochs_done + 1,
                settings.epochs,
                resume.path.relative_to(run_dir),
                f" (dropped {dropped} results row(s) of epochs trained after it)" if dropped else "",
            )
            model = YOLO(str(resume.path))
            callbacks.register(model)
            model.train(resume=str(resume.path), **common)
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
                **settings.extra_args,
                **common,
            )
    finally:
        callbacks.end_setup()
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
