"""What a TrainingRun may ask of ultralytics: the CRD's schema and the trainer's checks share these."""

from __future__ import annotations

from typing import Final

#: ultralytics ``train()`` arguments that ``TRAINING_EXTRA_ARGS`` may set.
#: Only hyper-parameters and augmentation knobs: anything that names a path
#: (project, name, data, model, pretrained...), changes where output goes, or
#: has its own setting (epochs, batch, imgsz, device...) is refused, and so is
#: ``time``, which rewrites the epoch count in flight and breaks resuming.
ALLOWED_EXTRA_ARGS: Final[frozenset[str]] = frozenset(
    {
        # optimiser and schedule
        "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
        "warmup_bias_lr", "cos_lr", "nbs", "close_mosaic", "amp", "fraction", "freeze",
        "dropout", "seed", "deterministic", "single_cls", "rect", "multi_scale", "cache",
        "val", "plots",
        # loss gains
        "box", "cls", "dfl",
        # augmentation
        "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
        "flipud", "fliplr", "bgr", "mosaic", "mixup", "cutmix", "copy_paste", "erasing",
        "auto_augment",
    }
)  # fmt: skip

#: Optimisers ultralytics accepts by name.
OPTIMIZERS: Final = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")
