"""Export of the best model: ONNX (checked in onnxruntime and by the parity gate), TensorRT on a GPU."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from azaion_contract.models.trainingrun import Artifacts
from azaion_workloads.fsutil import atomic_write_bytes, durable_move, sha256_file
from azaion_workloads.status import build
from azaion_workloads.training.config import TrainingSettings
from azaion_workloads.training.parity import NMS_CONF, NMS_IOU, ParityCheck
from azaion_workloads.training.progress import Progress, keepalive

log = logging.getLogger(__name__)

DONE_FILE = "export.json"
ONNX_NAME = "azaion.onnx"
#: How long an export may run without a beat of its own before liveness fails.
EXPORT_KEEPALIVE_SECONDS = 3 * 3600


@dataclass(frozen=True)
class ExportResult:
    """The export step's result: the ONNX file and, on a GPU, the TensorRT engine, with their hashes.

    ``parity`` is the parity gate's outcome (None when the gate is off); the
    pipeline refuses to encrypt an ONNX file whose check did not pass.
    """

    onnx: Path
    sha256: str
    engine: Path | None = None
    engine_sha256: str | None = None
    parity: ParityCheck | None = None

    def artifacts(self, root: Path) -> Artifacts:
        """The ``status.artifacts`` fields of this result (paths relative to the data root ``root``)."""
        fields: dict[str, Any] = {"onnx": str(self.onnx.relative_to(root)), "onnx_sha256": self.sha256}
        if self.engine is not None:  # no engine: its fields stay out of the patch (null would delete them)
            fields.update(tensorrt=str(self.engine.relative_to(root)), tensorrt_sha256=self.engine_sha256)
        if self.parity is not None:
            fields["onnx_parity"] = self.parity.status()
        return build(Artifacts, **fields)


def verify_onnx(path: Path, batch: int, imgsz: int) -> list[tuple[int, ...]]:
    """Load ``path`` in onnxruntime and run it once on a dummy input; return output shapes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {}
    for spec in session.get_inputs():
        shape = [
            dim if isinstance(dim, int) else (batch if index == 0 else imgsz) for index, dim in enumerate(spec.shape)
        ]
        dtype = np.float16 if "float16" in spec.type else np.float32
        inputs[spec.name] = np.random.default_rng(0).random(shape, dtype=np.float32).astype(dtype)
    outputs = session.run(None, inputs)
    if not outputs or any(np.asarray(out).size == 0 for out in outputs):
        raise RuntimeError(f"{path} produced an empty output in onnxruntime")
    return [tuple(np.asarray(out).shape) for out in outputs]


def export(settings: TrainingSettings, best: Path, best_sha256: str, progress: Progress) -> ExportResult:
    """Export ``best`` and run the parity gate on it (idempotent: a matching ``export.json`` skips the work).

    The gate's figures are added to ``export.json`` after the export's own
    record, so a crash during the evaluation redoes only the evaluation.
    """
    result, record = _export(settings, best, best_sha256, progress)
    if not settings.onnx_parity:
        log.info("export parity gate off (EXPORT_ONNX_PARITY=false)")
        return result
    from azaion_workloads.training import parity

    checked, parity_record = parity.check(
        settings, best, best_sha256, result.onnx, result.sha256, progress, record.get("parity")
    )
    if parity_record != record.get("parity"):
        record["parity"] = parity_record
        atomic_write_bytes(settings.run_dir / DONE_FILE, json.dumps(record, indent=2).encode())
    return replace(result, parity=checked)


def _export(
    settings: TrainingSettings, best: Path, best_sha256: str, progress: Progress
) -> tuple[ExportResult, dict[str, Any]]:
    """The ONNX export (and engine) and the content of ``export.json``, reused when it still matches."""
    run_dir = settings.run_dir
    done_file = run_dir / DONE_FILE
    target = run_dir / "artifacts" / ONNX_NAME
    options: dict[str, Any] = {
        "format": "onnx",
        "imgsz": settings.onnx_imgsz,
        "batch": settings.onnx_batch,
        "dynamic": settings.onnx_dynamic,
        "nms": settings.onnx_nms,
        "device": "cpu",
    }
    if settings.onnx_half:
        options["quantize"] = 16  # ultralytics' name for an FP16 export
    if settings.onnx_opset is not None:
        options["opset"] = settings.onnx_opset
    if settings.onnx_nms:
        # Explicit, not ultralytics' defaults: the parity gate evaluates the .pt at the same thresholds.
        options.update(conf=NMS_CONF, iou=NMS_IOU)
    wanted = {**options, "tensorrt": settings.export_tensorrt}
    previous = _previous(done_file, best_sha256, wanted)
    if previous is not None:
        log.info("export already done (%s); skipping", previous[0].onnx)
        return previous

    from ultralytics import YOLO

    with keepalive(progress, EXPORT_KEEPALIVE_SECONDS):
        produced = Path(YOLO(str(best)).export(**options))
    shapes = verify_onnx(produced, settings.onnx_batch, settings.onnx_imgsz)
    log.info("ONNX export %s runs in onnxruntime; outputs %s", produced.name, shapes)
    durable_move(produced, target)
    result = ExportResult(target, sha256_file(target))
    if settings.export_tensorrt:
        result = _tensorrt(settings, best, result, progress)
    record = {
        "source": best.name,
        "options": wanted,
        "sourceSha256": best_sha256,
        "onnx": str(result.onnx.relative_to(run_dir)),
        "onnxSha256": result.sha256,
        "outputShapes": [list(s) for s in shapes],
        "engine": str(result.engine.relative_to(run_dir)) if result.engine else None,
        "engineSha256": result.engine_sha256,
    }
    atomic_write_bytes(done_file, json.dumps(record, indent=2).encode())
    return result, record


def engine_name() -> str:
    """``azaion.cc_{major}.{minor}_sm_{count}.engine``: an engine only runs on its GPU kind."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"azaion.cc_{props.major}.{props.minor}_sm_{props.multi_processor_count}.engine"


def _tensorrt(settings: TrainingSettings, best: Path, result: ExportResult, progress: Progress) -> ExportResult:
    import torch

    if not torch.cuda.is_available():
        log.warning("EXPORT_TENSORRT is set but no CUDA device is present; skipping TensorRT")
        return result
    from ultralytics import YOLO

    with keepalive(progress, EXPORT_KEEPALIVE_SECONDS):
        produced = Path(
            YOLO(str(best)).export(
                format="engine",
                imgsz=settings.onnx_imgsz,
                batch=settings.onnx_batch,
                quantize=16,
                device=0,
            )
        )
    target = result.onnx.parent / engine_name()
    durable_move(produced, target)
    return ExportResult(result.onnx, result.sha256, target, sha256_file(target))


def _previous(done_file: Path, best_sha256: str, options: dict[str, Any]) -> tuple[ExportResult, dict[str, Any]] | None:
    try:
        record = json.loads(done_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_dir = done_file.parent
    onnx = run_dir / record["onnx"]
    if record.get("sourceSha256") != best_sha256 or record.get("options") != options or not onnx.exists():
        return None
    if sha256_file(onnx) != record.get("onnxSha256"):
        return None
    engine = run_dir / record["engine"] if record.get("engine") else None
    if engine is not None and not engine.exists():
        return None
    return ExportResult(onnx, record["onnxSha256"], engine, record.get("engineSha256")), record


__all__ = ["ExportResult", "engine_name", "export", "verify_onnx"]
