"""Training on a CUDA device and a TensorRT engine (needs a GPU; skipped without one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from azaion_devtools.synthetic import write_annotations

pytestmark = [pytest.mark.integration, pytest.mark.gpu]


def test_cuda_training_and_tensorrt_engine(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    root = tmp_path / "root"
    write_annotations(root / "data", 24, size=64)
    env = {
        **os.environ,
        "AZAION_ROOT_DIR": str(root),
        "AZAION_RESOURCE_NAME": "gpu",
        "AZAION_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
        "TRAINING_MODEL": "yolo26n.yaml",
        "TRAINING_EPOCHS": "1",
        "TRAINING_IMGSZ": "64",
        "TRAINING_BATCH_SIZE": "8",
        "TRAINING_WORKERS": "2",
        "TRAINING_DEVICE": "auto",
        "EXPORT_ONNX_IMGSZ": "64",
        "EXPORT_ONNX_BATCH": "1",
        "EXPORT_TENSORRT": "true",
    }
    result = subprocess.run(
        [sys.executable, "-m", "azaion_workloads.training.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "on 0" in result.stderr  # device "auto" chose the first CUDA device
    run_dir = root / "models" / "local" / "gpu"
    record = json.loads((run_dir / "export.json").read_text())
    engine = run_dir / record["engine"]
    assert engine.name.startswith("azaion.cc_") and engine.name.endswith(".engine")
    assert engine.stat().st_size > 0
