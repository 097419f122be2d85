"""The operator's Job env is accepted by the workload's settings, field for field.

Both sides are in this repository; this test fails when one of them renames or
re-types a setting without the other.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

import azaion_contract as contract
from azaion_workloads.training.config import load_settings

pytestmark = pytest.mark.unit

trainingjob = pytest.importorskip("azaion_operator.trainingrun.builders", reason="operator extra not installed")
models = pytest.importorskip("azaion_contract.models.trainingrun")
config = pytest.importorskip("azaion_operator.config")


def _as_process_env(entries: list[dict], secrets: dict[str, str]) -> dict[str, str]:
    """What the kubelet would hand the container (Secret refs resolved from ``secrets``)."""
    env = {}
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
    return env


def test_default_spec(tmp_path: Path) -> None:
    spec = models.TrainingRunSpec.model_validate({"model": "yolo26m.yaml", "storage": {"claimName": "data"}})
    operator_config = config.OperatorConfig()
    env = _as_process_env(trainingjob.trainer_env(spec, "ml", "run-7", operator_config), {})
    settings = load_settings({**env, contract.ENV_ROOT_DIR: str(tmp_path)})
    assert settings.resource_name == "run-7" and settings.resource_namespace == "ml"
    assert settings.model == "yolo26m.yaml"
    assert settings.epochs == spec.training.epochs and settings.imgsz == spec.training.imgsz
    assert settings.split == (Decimal("0.7"), Decimal("0.2"), Decimal("0.1"))
    assert not settings.publishing
    assert str(settings.heartbeat_file) == contract.HEARTBEAT_FILE


def test_full_spec(tmp_path: Path) -> None:
    spec = models.TrainingRunSpec.model_validate(
        {
            "fromRun": "earlier",
            "storage": {"claimName": "data"},
            "dataset": {"split": {"train": 80, "valid": 15, "test": 5}, "seed": 9},
            "training": {"epochs": 5, "extraArgs": {"lr0": 0.01, "mosaic": 0.0, "plots": False}},
            "export": {"onnx": {"opset": 17, "half": True}, "tensorrt": {"enabled": True}},
            "publish": {
                "promote": True,
                "encryptionKeySecretRef": {"name": "model-key", "key": "key"},
                "s3": {
                    "bucket": "models",
                    "endpoint": "https://s3.example",
                    "region": "eu-central-1",
                    "credentialsSecretRef": {"name": "s3"},
                },
            },
        }
    )
    entries = trainingjob.trainer_env(spec, "ml", "run-8", config.OperatorConfig())
    env = _as_process_env(entries, {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"})
    settings = load_settings({**env, contract.ENV_ROOT_DIR: str(tmp_path)})
    assert settings.model == "models/ml/earlier/weights/best.pt"
    assert settings.model_source() == str(tmp_path / "models/ml/earlier/weights/best.pt")
    assert settings.split == (Decimal("0.8"), Decimal("0.15"), Decimal("0.05"))
    assert settings.seed == 9 and settings.epochs == 5
    assert settings.extra_args == {"lr0": 0.01, "mosaic": 0.0, "plots": False}
    assert settings.onnx_opset == 17 and settings.onnx_half and settings.export_tensorrt
    assert settings.publishing and settings.promote
    assert (settings.s3_bucket, settings.s3_prefix, settings.s3_region) == ("models", "models", "eu-central-1")
    assert settings.s3_endpoint == "https://s3.example"
    assert str(settings.key_file) == contract.ENCRYPTION_KEY_FILE and settings.key_file_explicit


def test_the_trainer_is_told_its_own_image_for_the_published_manifest(tmp_path: Path) -> None:
    spec = models.TrainingRunSpec.model_validate({"model": "yolo26n.yaml", "storage": {"claimName": "data"}})
    meta = {"name": "run-9", "namespace": "ml", "uid": "u-9", "generation": 1}
    image = "ghcr.io/azaion/training@sha256:" + "ab" * 32
    job = trainingjob.build_job(meta, spec, 1, image, config.OperatorConfig())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    settings = load_settings({**_as_process_env(container["env"], {}), contract.ENV_ROOT_DIR: str(tmp_path)})
    assert settings.image == image, "the manifest records the image that trained the model"


def test_the_parity_gate_settings_reach_the_trainer(tmp_path: Path) -> None:
    default = models.TrainingRunSpec.model_validate({"model": "yolo26n.yaml", "storage": {"claimName": "data"}})
    spec = models.TrainingRunSpec.model_validate(
        {
            "model": "yolo26n.yaml",
            "storage": {"claimName": "data"},
            "export": {"onnx": {"parity": {"enabled": False, "tolerance": 0.05, "maxImages": 30}}},
        }
    )
    settings = [
        load_settings(
            {
                **_as_process_env(trainingjob.trainer_env(s, "ml", "run-1", config.OperatorConfig()), {}),
                contract.ENV_ROOT_DIR: str(tmp_path),
            }
        )
        for s in (default, spec)
    ]
    figures = [(s.onnx_parity, s.onnx_parity_tolerance, s.onnx_parity_max_images) for s in settings]
    assert figures == [(True, 0.01, 1000), (False, 0.05, 30)]


@pytest.mark.parametrize(
    ("parity", "field"),
    [({"tolerance": 1.5}, "tolerance"), ({"tolerance": -0.1}, "tolerance"), ({"maxImages": 0}, "maxImages")],
)
def test_a_bad_parity_setting_is_refused_naming_the_field(parity: dict[str, float], field: str) -> None:
    body = {"model": "yolo26n.yaml", "storage": {"claimName": "data"}, "export": {"onnx": {"parity": parity}}}
    with pytest.raises(ValidationError) as refused:
        models.TrainingRunSpec.model_validate(body)
    locations = [".".join(str(step) for step in error["loc"]) for error in refused.value.errors()]
    assert locations == [f"export.onnx.parity.{field}"]
