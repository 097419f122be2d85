"""The export parity gate on a real model, through the ``azaion-train`` entrypoint.

One small model is trained once for the module (single-class synthetic boxes
at 64 px, long enough for a mAP50-95 well above the tolerance); each test runs
the export and the gate on its own copy of that run, with other EXPORT_ONNX_*
settings, so training is skipped and only the export, the gate and what
follows run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import azaion_contract as contract
from azaion_devtools.synthetic import write_annotations
from tests.integration.test_training_run import IMGSZ, Run

pytestmark = pytest.mark.integration

NAME = "parity"
TOLERANCE = 0.01
# AdamW at a fixed rate without mosaic: ultralytics' automatic choice for 80 class slots
# learns nothing in this few steps. One class: ultralytics' validator keeps every class
# above the threshold for a box, the NMS inside the ONNX file only the best one, so with
# several classes a barely trained model scores lower as ONNX by that alone.
TRAINING = {
    "TRAINING_EPOCHS": "30",
    "TRAINING_BATCH_SIZE": "16",
    "TRAINING_OPTIMIZER": "AdamW",
    "TRAINING_EXTRA_ARGS": json.dumps({"plots": False, "lr0": 0.003, "mosaic": 0.0, "warmup_epochs": 1}),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the formed dataset and the trained run (no export yet)."""
    tmp = tmp_path_factory.mktemp("parity-trained")
    run = Run(tmp, NAME, **TRAINING, EXPORT_ONNX="false")
    write_annotations(run.root / "data", 200, size=IMGSZ, class_ids=(0,))
    code, log = run.run("train.log", timeout=600)
    assert code == 0, log[-4000:]
    assert (run.run_dir / "training.json").exists()
    return tmp / "root"


def _copy_of(trained: Path, tmp_path: Path, **extra: str) -> Run:
    """The trained run in a data root of its own (its data.yaml naming its own dataset)."""
    shutil.copytree(trained, tmp_path / "root")
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    run = Run(tmp_path, NAME, **TRAINING, ENCRYPTION_KEY_FILE=str(key), **extra)
    data_yaml = run.root / "datasets" / "local" / NAME / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace(str(trained), str(run.root)))
    return run


def test_a_faithful_export_passes_and_is_encrypted(trained: Path, tmp_path: Path) -> None:
    run = _copy_of(trained, tmp_path, EXPORT_ONNX_PARITY_MAX_IMAGES="30")
    code, log = run.run("export.log")
    assert code == 0, log[-4000:]
    assert "training already finished" in log
    assert run.network_attempts() == "", "the run tried to reach the network"

    parity = run.status()["artifacts"]["onnxParity"]
    assert parity["passed"] is True and parity["images"] == 30 and parity["tolerance"] == TOLERANCE
    # A figure this far above the tolerance makes the refusal in the other test mean something.
    assert parity["ptMap50_95"] > 3 * TOLERANCE, parity
    assert abs(parity["ptMap50_95"] - parity["onnxMap50_95"]) <= TOLERANCE, parity
    assert (run.run_dir / "artifacts" / "azaion.onnx.enc").exists()
    record = json.loads((run.run_dir / "export.json").read_text())
    assert {k: record["parity"][k] for k in parity} == parity
    assert sorted(p.name for p in (run.run_dir / "parity" / "data" / "images").iterdir())[0] == "img-000000.jpg"

    # A retry skips both the export and the evaluation.
    code, log = run.run("export-2.log")
    assert code == 0, log[-4000:]
    assert "export already done" in log and "export parity already evaluated" in log, log[-3000:]
    assert run.status()["artifacts"]["onnxParity"] == parity


def test_an_export_at_the_wrong_size_is_refused_and_not_encrypted(trained: Path, tmp_path: Path) -> None:
    run = _copy_of(trained, tmp_path, EXPORT_ONNX_IMGSZ=str(IMGSZ // 2))
    code, log = run.run("export.log")
    assert code == contract.EXIT_PERMANENT, log[-4000:]
    assert "EXPORT_PARITY: ONNX mAP50-95 " in log, log[-3000:]
    assert run.network_attempts() == ""

    parity = run.status()["artifacts"]["onnxParity"]  # reported before the refusal
    assert parity["passed"] is False and parity["images"] == 40  # every validation image of 200 at 70/20/10
    assert parity["ptMap50_95"] > 3 * TOLERANCE, parity
    assert parity["onnxMap50_95"] < parity["ptMap50_95"] - TOLERANCE, parity
    assert f"than {TOLERANCE:g} below the .pt's {parity['ptMap50_95']:.4f} on 40 validation images" in log
    assert (run.run_dir / "artifacts" / "azaion.onnx").exists()
    assert not (run.run_dir / "artifacts" / "azaion.onnx.enc").exists()
    assert not (run.run_dir / "encrypt.json").exists()
