"""Settings from the environment: defaults, one message naming every problem, exit 78."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import azaion_contract as contract
from azaion_workloads.training.config import (
    ALLOWED_EXTRA_ARGS,
    EnvError,
    load_settings,
    parse_split,
)

pytestmark = pytest.mark.unit


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {"AZAION_ROOT_DIR": str(root), "AZAION_RESOURCE_NAME": "run-1", **extra}


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    assert settings.resource_namespace == "local"
    assert (settings.epochs, settings.batch_size, settings.imgsz) == (120, 11, 1280)
    assert (settings.save_period, settings.workers, settings.patience) == (1, 8, 100)
    assert settings.split == (Decimal("0.7"), Decimal("0.2"), Decimal("0.1"))
    assert settings.export_onnx and settings.onnx_nms and not settings.export_tensorrt
    assert (settings.onnx_imgsz, settings.onnx_batch) == (1280, 4)
    assert settings.run_dir == tmp_path / "models" / "local" / "run-1"
    assert settings.dataset_dir == tmp_path / "datasets" / "local" / "run-1"
    assert not settings.publishing and not settings.promote
    assert settings.key_file == Path(contract.ENCRYPTION_KEY_FILE)


def test_full_settings(tmp_path: Path) -> None:
    settings = load_settings(
        _env(
            tmp_path,
            AZAION_RESOURCE_NAMESPACE="team-a",
            TRAINING_MODEL="models/team-a/prev/weights/best.pt",
            TRAINING_EPOCHS="3",
            TRAINING_BATCH_SIZE="-1",
            TRAINING_DEVICE="0,1",
            TRAINING_OPTIMIZER="AdamW",
            TRAINING_PATIENCE="10",
            TRAINING_EXTRA_ARGS=json.dumps({"lr0": 0.002, "mosaic": 0.5, "freeze": [0, 1]}),
            DATASET_SPLIT="0.8, 0.1, 0.1",
            DATASET_SEED="42",
            EXPORT_ONNX="false",
            S3_BUCKET="models",
            S3_ENDPOINT="http://minio:9000",
            PUBLISH_PROMOTE="yes",
        )
    )
    assert settings.model_source() == str(tmp_path / "models/team-a/prev/weights/best.pt")
    assert settings.batch_size == -1 and settings.device == "0,1"
    assert settings.extra_args == {"lr0": 0.002, "mosaic": 0.5, "freeze": [0, 1]}
    assert settings.publishing and settings.promote and not settings.export_onnx


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    env = {
        "AZAION_ROOT_DIR": str(tmp_path),
        "TRAINING_EPOCHS": "zero",
        "TRAINING_IMGSZ": "16",
        "TRAINING_DEVICE": "gpu please",
        "TRAINING_EXTRA_ARGS": json.dumps({"project": "/etc", "lr0": 0.1}),
        "DATASET_SPLIT": "0.5,0.5,0.5",
        "EXPORT_ONNX": "maybe",
        "TRAINING_OPTIMIZER": "Magic",
        "S3_ENDPOINT": "file:///etc",
    }
    with pytest.raises(EnvError) as caught:
        load_settings(env)
    message = str(caught.value)
    for name in (
        "AZAION_RESOURCE_NAME",
        "TRAINING_EPOCHS",
        "TRAINING_IMGSZ",
        "TRAINING_DEVICE",
        "TRAINING_EXTRA_ARGS",
        "DATASET_SPLIT",
        "EXPORT_ONNX",
        "TRAINING_OPTIMIZER",
        "S3_ENDPOINT",
    ):
        assert name in message, (name, message)
    assert "project" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AZAION_RESOURCE_NAME", "../escape"),
        ("AZAION_RESOURCE_NAME", "a/b"),
        ("AZAION_RESOURCE_NAMESPACE", "/etc"),
        ("DATASET_CLASSES_FILE", "../../etc/passwd"),
        ("DATASET_CLASSES_FILE", "/etc/passwd"),
        ("TRAINING_MODEL", "/etc/model.pt"),
        ("TRAINING_MODEL", "../outside.pt"),
        ("TRAINING_MODEL", "models/../../x.pt"),
        ("AZAION_DATA_DIR", "../data"),
    ],
)
def test_names_cannot_leave_the_root(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(EnvError, match=name):
        load_settings({**_env(tmp_path), name: value})


def test_split_mode_needs_its_settings(tmp_path: Path) -> None:
    with pytest.raises(EnvError) as caught:
        load_settings(_env(tmp_path, AZAION_API_URL="http://api.local"))
    for name in ("AZAION_API_EMAIL", "AZAION_API_PASSWORD", "AZAION_API_FOLDER", "S3_BUCKET"):
        assert name in str(caught.value)


def test_password_is_not_printed(tmp_path: Path) -> None:
    settings = load_settings(
        _env(
            tmp_path,
            AZAION_API_URL="http://api.local",
            AZAION_API_EMAIL="a@b.c",
            AZAION_API_PASSWORD="hunter2",
            AZAION_API_FOLDER="models",
            S3_BUCKET="b",
        )
    )
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize("text", ["0.7,0.3", "0.7,0.2,0.2", "1,0,0", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_splits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_split(text)


def test_allow_list_excludes_paths_and_own_settings() -> None:
    for refused in ("project", "name", "data", "model", "save_dir", "resume", "epochs", "device"):
        assert refused not in ALLOWED_EXTRA_ARGS
    assert {"lr0", "mosaic", "fliplr"} <= ALLOWED_EXTRA_ARGS


def test_cli_exits_78_with_one_message_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AZAION_", "TRAINING_"))},
        "AZAION_ROOT_DIR": str(root),
        "AZAION_RESOURCE_NAME": "../../escape",
        "TRAINING_EPOCHS": "-3",
        "AZAION_HEARTBEAT_FILE": str(tmp_path / "hb"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "azaion_workloads.training.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == contract.EXIT_PERMANENT
    assert "AZAION_RESOURCE_NAME" in result.stderr and "TRAINING_EPOCHS" in result.stderr
    assert result.stderr.count("invalid training settings") == 1
    assert list(tmp_path.iterdir()) == []  # no data root, no heartbeat, nothing


def test_cli_usage_error_is_permanent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "azaion_workloads.training.cli", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == contract.EXIT_PERMANENT
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(("visible", "expected"), [(0, "cpu"), (1, "0"), (2, "0,1"), (4, "0,1,2,3")])
def test_auto_device_trains_on_every_gpu_the_pod_holds(monkeypatch, visible: int, expected: str) -> None:
    import torch

    from azaion_workloads.training.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert resolve_device("auto") == expected
    assert resolve_device("1") == "1", "an explicit device is kept"
