"""The export parity gate: the ONNX file must score like the .pt it was exported from.

Both models are evaluated by ultralytics' own validator (``YOLO(...).val()``)
on the same validation images with the same confidence and IoU thresholds;
the .pt at the training imgsz, the ONNX file at its export imgsz, so an export
at the wrong input size shows as a drop. When the ONNX file's mAP50-95 falls
more than the tolerance below the .pt's, the run must not publish it.

The .pt is evaluated with the detection head the export used: with NMS inside
(``EXPORT_ONNX_NMS``) the one-to-many head with NMS, at the confidence baked
into the file; without, the NMS-free one-to-one head. ultralytics' validator
keeps every class above the threshold for each box (multi-label NMS), the
NMS inside the file only the best one, so on a model unsure of its classes
the ONNX file with NMS scores somewhat lower: that is the published model.

The images are the first ``maxImages`` of the validation split by name,
hard-linked (with their labels) into ``parity/data/`` of the run directory, so
the validator's label cache and its output stay in the run directory as well.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from azaion_contract import IMAGE_EXTENSIONS
from azaion_contract.models.trainingrun import ParityResult
from azaion_workloads.fsutil import atomic_write_bytes
from azaion_workloads.status import build
from azaion_workloads.training.config import TrainingSettings
from azaion_workloads.training.dataset import DATA_YAML, place_file
from azaion_workloads.training.progress import Progress, keepalive

log = logging.getLogger(__name__)

PARITY_DIR = "parity"
#: ultralytics' validation confidence threshold: the whole precision-recall curve of a model without NMS inside.
VAL_CONF = 0.001
#: The thresholds an export with NMS inside is built with (ultralytics' defaults for one): boxes below
#: NMS_CONF never leave that ONNX file, so the .pt is evaluated at the same threshold.
NMS_CONF, NMS_IOU = 0.25, 0.7
#: Figures are rounded to this many places before the comparison, so float noise never decides it.
PLACES = 6
#: Longest evaluation of one model without a beat of its own before liveness fails.
EVAL_KEEPALIVE_SECONDS = 3 * 3600
NO_VALIDATION_IMAGES = "no validation images"


def within_tolerance(pt_map: float, onnx_map: float, tolerance: float) -> bool:
    """Whether ``onnx_map`` is at most ``tolerance`` (absolute) below ``pt_map``; a higher ONNX figure passes."""
    return round(pt_map - onnx_map, PLACES) <= round(tolerance, PLACES)


@dataclass(frozen=True)
class ParityCheck:
    """The gate's outcome: both figures on ``images`` validation images, or why it did not run."""

    tolerance: float
    images: int
    pt_map50_95: float | None = None
    onnx_map50_95: float | None = None
    #: Why the gate did not run (then both figures are None).
    skipped: str | None = None

    @property
    def passed(self) -> bool | None:
        """True or False once both figures are there; None when the gate could not run."""
        if self.pt_map50_95 is None or self.onnx_map50_95 is None:
            return None
        return within_tolerance(self.pt_map50_95, self.onnx_map50_95, self.tolerance)

    def refusal(self) -> str | None:
        """The run's failure message when the ONNX file fell too far below the .pt, else None."""
        if self.passed is not False:
            return None
        return (
            f"EXPORT_PARITY: ONNX mAP50-95 {self.onnx_map50_95:.4f} is more than {self.tolerance:g} below "
            f"the .pt's {self.pt_map50_95:.4f} on {self.images} validation images"
        )

    def status(self) -> ParityResult:
        """``status.artifacts.onnxParity``: unset fields stay out of the merge patch."""
        fields: dict[str, Any] = {"tolerance": self.tolerance, "images": self.images}
        if self.passed is not None:
            fields.update(pt_map50_95=self.pt_map50_95, onnx_map50_95=self.onnx_map50_95, passed=self.passed)
        if self.skipped is not None:
            fields["skipped"] = self.skipped
        return build(ParityResult, **fields)

    def document(self) -> dict[str, Any]:
        """The gate as ``export.json`` and the published manifest record it (every key, null when unknown)."""
        return {
            "ptMap50_95": self.pt_map50_95,
            "onnxMap50_95": self.onnx_map50_95,
            "tolerance": self.tolerance,
            "images": self.images,
            "passed": self.passed,
            "skipped": self.skipped,
        }


def validation_images(data_yaml: Path) -> list[Path]:
    """The validation split's images, sorted by name (what ``data.yaml``'s ``val`` points at)."""
    document = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    directory = Path(document["path"]) / document["val"]
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def subset(data_yaml: Path, images: list[Path], target: Path) -> Path:
    """Link ``images`` and their labels into ``target/{images,labels}``; return the subset's ``data.yaml``.

    The directory is made afresh each time: a subset left by an earlier try
    may hold other images.
    """
    if target.exists():
        shutil.rmtree(target)
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir()
    for image in images:
        place_file(image, target / "images" / image.name)
        label = image.parent.parent / "labels" / f"{image.stem}.txt"
        if label.exists():  # an image without boxes has no label file: a background image
            place_file(label, target / "labels" / label.name)
    document = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    document.update(path=str(target), train="images", val="images")
    document.pop("test", None)
    subset_yaml = target / "data.yaml"
    atomic_write_bytes(subset_yaml, yaml.safe_dump(document, sort_keys=False).encode())
    return subset_yaml


def thresholds(settings: TrainingSettings) -> tuple[float, float]:
    """The confidence and IoU thresholds both evaluations use (those of the export when it has NMS inside)."""
    return (NMS_CONF, NMS_IOU) if settings.onnx_nms else (VAL_CONF, NMS_IOU)


def evaluation_inputs(
    settings: TrainingSettings, best_sha256: str, onnx_sha256: str, images: list[Path]
) -> dict[str, Any]:
    """What the two figures depend on: a record with the same inputs is reused (the tolerance is not among them)."""
    names = hashlib.sha256("\n".join(p.name for p in images).encode()).hexdigest()
    conf, iou = thresholds(settings)
    return {
        "ptSha256": best_sha256,
        "onnxSha256": onnx_sha256,
        "imgsz": settings.imgsz,
        "maxImages": settings.onnx_parity_max_images,
        "imagesSha256": names,
        "nms": settings.onnx_nms,
        "conf": conf,
        "iou": iou,
    }


def check(
    settings: TrainingSettings,
    best: Path,
    best_sha256: str,
    onnx: Path,
    onnx_sha256: str,
    progress: Progress,
    previous: dict[str, Any] | None = None,
) -> tuple[ParityCheck, dict[str, Any]]:
    """Evaluate both models and return the check with its record.

    ``previous`` is the record of an earlier try: with the same inputs its
    figures are reused, judged by the current tolerance.
    """
    tolerance = settings.onnx_parity_tolerance
    images = validation_images(settings.dataset_dir / DATA_YAML)[: settings.onnx_parity_max_images]
    if not images:
        log.warning("export parity gate skipped: the dataset has no validation images")
        result = ParityCheck(tolerance, 0, skipped=NO_VALIDATION_IMAGES)
        return result, {**result.document(), "inputs": None}
    inputs = evaluation_inputs(settings, best_sha256, onnx_sha256, images)
    if previous is not None and previous.get("inputs") == inputs:
        result = ParityCheck(tolerance, len(images), previous["ptMap50_95"], previous["onnxMap50_95"])
        log.info("export parity already evaluated (.pt %s, ONNX %s); skipping", *_figures(result))
        return result, {**result.document(), "inputs": inputs}

    from azaion_workloads.training.train import resolve_device

    work = settings.run_dir / PARITY_DIR
    data = subset(settings.dataset_dir / DATA_YAML, images, work / "data")
    # The .pt on the first GPU when there is one (validation runs on one device); the ONNX file where it was exported.
    pt_device = resolve_device(settings.device).split(",")[0]
    pt_batch = settings.batch_size if settings.batch_size > 0 else 16
    pt_map = _evaluate(best, data, settings.imgsz, pt_batch, pt_device, settings, work / "pt", progress)
    onnx_map = _evaluate(onnx, data, settings.onnx_imgsz, settings.onnx_batch, "cpu", settings, work / "onnx", progress)
    result = ParityCheck(tolerance, len(images), pt_map, onnx_map)
    log.info(
        "export parity on %d validation images: .pt mAP50-95 %s, ONNX %s (tolerance %g): %s",
        len(images),
        *_figures(result),
        tolerance,
        "passed" if result.passed else "REFUSED",
    )
    return result, {**result.document(), "inputs": inputs}


def _figures(result: ParityCheck) -> tuple[str, str]:
    return f"{result.pt_map50_95:.4f}", f"{result.onnx_map50_95:.4f}"


def _evaluate(
    model_file: Path,
    data: Path,
    imgsz: int,
    batch: int,
    device: str,
    settings: TrainingSettings,
    save_dir: Path,
    progress: Progress,
) -> float:
    """mAP50-95 of ``model_file`` on ``data``'s val images, by ultralytics' validator."""
    from ultralytics import YOLO

    conf, iou = thresholds(settings)

    model = YOLO(str(model_file), task="detect")
    model.add_callback("on_val_batch_end", lambda _validator: progress.beat())
    with keepalive(progress, EVAL_KEEPALIVE_SECONDS):
        metrics = model.val(
            data=str(data),
            split="val",
            imgsz=imgsz,
            batch=batch,
            device=device,
            conf=conf,
            iou=iou,
            # Which head: the validator takes nms=False for the NMS-free one the export then has too.
            nms=settings.onnx_nms,
            # Square letterboxed batches for both: an ONNX file with a fixed input has no rectangular ones.
            rect=False,
            workers=min(settings.workers, 8),
            plots=False,
            save_json=False,
            verbose=False,
            project=str(save_dir.parent),
            name=save_dir.name,
            exist_ok=True,
        )
    return round(float(metrics.box.map), PLACES)


__all__ = ["ParityCheck", "check", "subset", "validation_images", "within_tolerance"]
