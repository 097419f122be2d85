"""Mid-epoch checkpoints and exact resume, on top of ultralytics' own training loop.

ultralytics saves and resumes at epoch boundaries only: an interruption
throws away the partial epoch. :class:`ResumableTrainer` adds, without
replacing the loop:

- **A shuffle that is a function of (seed, epoch) alone** (:class:`EpochSampler`),
  so a later attempt knows which images the rest of an interrupted epoch holds.
- **A mid-epoch checkpoint** (:meth:`ResumableTrainer.mid_epoch_checkpoint`)
  at a batch boundary right after an optimizer step (no half-accumulated
  gradients): an ordinary ultralytics checkpoint (so ultralytics' own resume
  restores the optimizer, scaler, EMA and early-stopping state; kept at full
  precision) plus the raw model weights, the position, the running loss, the
  RNG states and the mosaic buffer.
- **Exact resume**: the loop runs unchanged, and the first ``done`` batch
  slots of the resumed epoch are placeholders that cost nothing (a stand-in
  model returns a zero loss and the optimizer step is skipped), so the loop's
  own counters (batch index, warmup, accumulation cadence, running mean of
  the loss) reach the first real batch as they were. Just before that batch
  is loaded, the weights, running loss, RNG states and mosaic buffer are
  restored.

With ``workers=0`` and ``deterministic`` the rest of the epoch is the same
computation as without the interruption. With loader workers the images and
their order are the same, but the augmentation draws of the workers' own
RNGs cannot be captured, so they differ. Multi-GPU (DDP) training runs in
ultralytics' own subprocesses and resumes at epoch boundaries, as before.

The loop internals this relies on are those of the ultralytics version in
the lock file (:data:`PINNED_ULTRALYTICS`); tests/unit/test_training_resumable.py
fails when the installed version changes them.
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import logging
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.torch_utils import unwrap_model

from azaion_workloads.training.checkpoints import MID_EPOCH_KEY, Position

log = logging.getLogger(__name__)

PINNED_ULTRALYTICS = "8.4.190"
#: Marks a placeholder batch (its value: the slot's index in the epoch).
_SLOT = "azaion_slot"


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The shuffled sample order of ``epoch``: the same for the same (size, seed, epoch)."""
    digest = hashlib.sha256(f"{seed}:{epoch}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "little"))
    return torch.randperm(size, generator=generator).tolist()


class EpochSampler(Sampler[int]):
    """Each pass is the next epoch's :func:`epoch_order`; ``skip`` leaves out the trained start of one epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.next_epoch = 0
        #: (epoch, samples): that epoch's pass starts after its first ``samples`` samples.
        self.skip: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        order = epoch_order(self.size, self.seed, epoch)
        if self.skip is not None and self.skip[0] == epoch:
            order = order[self.skip[1] :]
        return iter(order)


@dataclass
class _Resume:
    """What a mid-epoch checkpoint restores once its epoch's trained slots are passed over."""

    position: Position
    tloss: dict[str, torch.Tensor]
    accumulate: int
    rng: dict[str, Any]
    buffer: list[int] | None


class _StandIn:
    """Takes the model's place for the placeholder slots: a zero loss, no gradients, no state change."""

    def __init__(self, trainer: ResumableTrainer, real: torch.nn.Module, slots: int, loss_names: list[str]) -> None:
        self.trainer, self.real = trainer, real
        self.slots, self.loss_names = slots, loss_names

    def __call__(self, batch: Any) -> Any:
        if not isinstance(batch, dict):
            return None  # the compiled path calls the model on the images, then .loss(batch, preds)
        return self.loss(batch)

    def loss(self, batch: dict[str, Any], _preds: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = self.trainer.device
        # The loop steps the optimizer when ``ni - last_opt_step >= accumulate``: never during the
        # placeholders, except on the last one, so that last_opt_step ends on the saved step.
        self.trainer.accumulate = 0 if batch[_SLOT] == self.slots - 1 else sys.maxsize
        zero = torch.zeros((), device=device, requires_grad=True)
        return zero, {name: torch.zeros((), device=device) for name in self.loss_names}


class _TrainLoader:
    """ultralytics' train loader, whose resumed epoch begins with placeholders for the trained slots."""

    def __init__(self, loader: Any, trainer: ResumableTrainer) -> None:
        self._loader, self._trainer = loader, trainer

    def __len__(self) -> int:
        return len(self._loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __iter__(self) -> Iterator[Any]:
        trainer = self._trainer
        resume = trainer.take_resume()
        skipped = 0
        if resume is not None:
            skipped = resume.position.batches
            yield from trainer.placeholders(resume)
            trainer.restore(resume)  # before the first real batch is loaded: its augmentation draws come next
        for index, batch in enumerate(itertools.islice(self._loader, len(self._loader) - skipped), skipped):
            trainer.batch_index = index
            yield batch


class ResumableTrainer(DetectionTrainer):
    """ultralytics' detection trainer with mid-epoch checkpoints and exact resume (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: 0-based index of the batch the loop is at in the current epoch.
        self.batch_index = -1
        #: True while the loop passes over the trained slots of a resumed epoch.
        self.fast_forwarding = False
        #: Where the run resumed from a mid-epoch checkpoint (None: fresh or at an epoch boundary).
        self.resumed_from: Position | None = None
        self._stepped_at: tuple[int, int] | None = None
        self._sampler: EpochSampler | None = None
        self._resume: _Resume | None = None

    # Loading ---------------------------------------------------------------

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train") -> Any:
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        if mode != "train" or rank != -1 or not self._shuffled_by_ultralytics(loader):
            return loader
        # The batch sampler's own sampler is ultralytics' RandomSampler; the loader is not started yet.
        self._sampler = EpochSampler(len(loader.dataset), int(self.args.seed))
        self._sampler.next_epoch = self.start_epoch
        loader.batch_sampler.sampler.sampler = self._sampler
        return _TrainLoader(loader, self)

    @staticmethod
    def _shuffled_by_ultralytics(loader: Any) -> bool:
        inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        return isinstance(getattr(inner, "sampler", None), torch.utils.data.RandomSampler)

    def _close_dataloader_mosaic(self) -> None:
        super()._close_dataloader_mosaic()
        if self._sampler is not None:
            # The loop resets the loader next: its new pass is this epoch's, whatever was prefetched.
            self._sampler.next_epoch = self.epoch

    @property
    def mid_epoch_capable(self) -> bool:
        """Whether this run can checkpoint and resume mid-epoch (one process, our sampler)."""
        return self._sampler is not None and self.world_size <= 1

    # Stepping ----------------------------------------------------------------

    def optimizer_step(self) -> None:
        if self.fast_forwarding:
            return  # the step of a trained slot is already in the restored state
        super().optimizer_step()
        self._stepped_at = (self.epoch, self.batch_index)

    @property
    def at_step_boundary(self) -> bool:
        """True right after an optimizer step: no gradients are half-accumulated."""
        return not self.fast_forwarding and self._stepped_at == (self.epoch, self.batch_index)

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        if _SLOT not in batch:
            super().plot_training_samples(batch, ni)

    # Mid-epoch checkpoints -----------------------------------------------------

    def mid_epoch_checkpoint(self) -> bytes:
        """The checkpoint of the current batch boundary, serialized (call only :attr:`at_step_boundary`)."""
        if not self.at_step_boundary:
            raise RuntimeError("a mid-epoch checkpoint needs a batch boundary right after an optimizer step")
        position = Position(self.epoch, self.batch_index + 1)
        ema = copy.deepcopy(self.ema.ema).to(memory_format=torch.contiguous_format)
        if hasattr(ema, "criterion"):
            ema.criterion = None  # training-only state, as ultralytics strips it
        dataset = self.train_loader.dataset
        exact = self.train_loader.num_workers == 0
        state = {
            "epoch": position.epochs,
            "done": position.batches,
            "batches": len(self.train_loader),
            "batch_size": self.batch_size,
            "seed": int(self.args.seed),
            "model": unwrap_model(self.model).state_dict(),
            "tloss": {k: v.detach().cpu() for k, v in (self.tloss or {}).items()},
            "accumulate": int(self.accumulate),
            "rng": _rng_state(),
            # Worker processes keep their own buffers: only the in-process loader's can be restored.
            "buffer": list(getattr(dataset, "buffer", [])) if exact else None,
        }
        buffer = io.BytesIO()
        torch.save(
            {
                "epoch": position.epochs - 1,  # the last completed epoch, as ultralytics counts
                "best_fitness": self.best_fitness,
                "stopper": {"best_fitness": self.stopper.best_fitness, "best_epoch": self.stopper.best_epoch},
                "model": None,
                "ema": ema,  # full precision: a resume continues the same average
                "updates": self.ema.updates,
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "train_args": vars(self.args),
                "train_metrics": {**self.metrics, "fitness": self.fitness},
                "date": datetime.now().astimezone().isoformat(),
                "version": ULTRALYTICS_VERSION,
                MID_EPOCH_KEY: state,
            },
            buffer,
        )
        return buffer.getvalue()

    def resume_training(self, ckpt: dict[str, Any] | None) -> None:
        state = (ckpt or {}).get(MID_EPOCH_KEY) if self.resume else None
        if state is None:
            super().resume_training(ckpt)
        else:
            assert ckpt is not None
            if state["epoch"] == 0:  # ultralytics refuses to resume before its first completed epoch
                self._load_checkpoint_state(ckpt)
                self.start_epoch = 0
            else:
                super().resume_training(ckpt)  # start_epoch = the checkpoint's epoch
            # ultralytics starts a resumed model from the EMA weights; continue from the trained ones.
            unwrap_model(self.model).load_state_dict(state["model"])
            self._arm(state)
        if self._sampler is not None:
            self._sampler.next_epoch = self.start_epoch

    def _arm(self, state: dict[str, Any]) -> None:
        position = Position(int(state["epoch"]), int(state["done"]))
        same_batches = state["batches"] == len(self.train_loader) and state["batch_size"] == self.batch_size
        if self._sampler is None or not same_batches or state["seed"] != int(self.args.seed):
            log.warning(
                "the mid-epoch checkpoint at batch %d of epoch %d was made with other batches; "
                "the epoch starts over (from the checkpoint's weights)",
                position.batches,
                position.epochs + 1,
            )
            return
        self._resume = _Resume(position, state["tloss"], state["accumulate"], state["rng"], state["buffer"])
        self._sampler.skip = (position.epochs, position.batches * self.batch_size)
        self.resumed_from = position
        log.info("resuming at batch %d of %d of epoch %d", position.batches, state["batches"], position.epochs + 1)

    def take_resume(self) -> _Resume | None:
        """The pending resume when the loop starts its epoch, once."""
        if self._resume is None or self._resume.position.epochs != self.epoch:
            return None
        resume, self._resume = self._resume, None
        return resume

    def placeholders(self, resume: _Resume) -> Iterator[dict[str, Any]]:
        """The trained slots of the resumed epoch, passed over with the stand-in model."""
        real = self.model
        self.model = _StandIn(self, real, resume.position.batches, list(resume.tloss))
        self.fast_forwarding = True
        for slot in range(resume.position.batches):
            self.batch_index = slot
            yield {"img": torch.zeros(1, 3, 1, 1, dtype=torch.uint8), "cls": torch.zeros(0, 1), _SLOT: slot}

    def restore(self, resume: _Resume) -> None:
        """Put back the model and the state of the first untrained batch."""
        if isinstance(self.model, _StandIn):
            self.model = self.model.real
        self.fast_forwarding = False
        self.tloss = {k: v.to(self.device) for k, v in resume.tloss.items()} or None
        self.accumulate = resume.accumulate  # the warmup sets it again where it still ramps
        _set_rng_state(resume.rng)
        if resume.buffer is not None:
            _refill_buffer(self.train_loader.dataset, resume.buffer)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _refill_buffer(dataset: Any, indices: list[int]) -> None:
    """Reload the mosaic buffer in its order: mosaic draws its partner images from it."""
    buffer = getattr(dataset, "buffer", None)
    if buffer is None:
        return
    buffer.clear()
    for index in indices:
        if dataset.ims[index] is None:
            dataset.load_image(index)  # caches the image and appends it, as the first load did
        else:
            buffer.append(index)
