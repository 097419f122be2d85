"""The training workload's settings, read from the environment in one place.

Every setting is validated by one pydantic model so that a bad deployment
fails at once with a single message naming every problem (exit code
``EXIT_PERMANENT``), instead of failing hours later in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import azaion_contract as contract
from azaion_contract.env import TRAINING_ENV
from azaion_contract.training_options import ALLOWED_EXTRA_ARGS, OPTIMIZERS
from azaion_workloads.layout import DataLayout, UnsafePathError, safe_child, safe_name

Scalar = bool | int | float | str


class EnvError(ValueError):
    """The environment does not describe a valid run; the message lists every problem."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_split(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """``"0.7,0.2,0.1"`` -> exact decimals (train, valid, test) summing to 1."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected three fractions train,valid,test: {text!r}")
    try:
        values = tuple(Decimal(p) for p in parts)
    except InvalidOperation:
        raise ValueError(f"not numbers: {text!r}") from None
    if any(not v.is_finite() or v < 0 for v in values):
        raise ValueError(f"fractions must be >= 0: {text!r}")
    if values[0] <= 0 or values[1] <= 0:
        raise ValueError(f"train and valid fractions must be > 0: {text!r}")
    if abs(sum(values) - 1) > Decimal("0.000001"):
        raise ValueError(f"fractions must sum to 1: {text!r}")
    return values[0], values[1], values[2]


class TrainingSettings(BaseModel):
    """Validated settings of one training run (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    layout: DataLayout
    resource_name: str
    resource_namespace: str = "local"

    model: str = "yolo26m.yaml"
    from_run: str | None = None
    epochs: int = Field(default=120, ge=1)
    batch_size: int = Field(default=11)
    imgsz: int = Field(default=1280, ge=32)
    save_period: int = Field(default=1, ge=-1)
    #: Fractions allowed here (a spec holds whole minutes): tests checkpoint every few seconds.
    checkpoint_interval_minutes: float = Field(default=10, ge=0, allow_inf_nan=False)
    workers: int = Field(default=8, ge=0)
    patience: int = Field(default=100, ge=0)
    optimizer: Literal[OPTIMIZERS] = "auto"  # type: ignore[valid-type]
    device: str = "auto"
    extra_args: dict[str, Scalar | list[int]] = Field(default_factory=dict)

    source: Literal["validated"] = "validated"
    split: tuple[Decimal, Decimal, Decimal] = (Decimal("0.7"), Decimal("0.2"), Decimal("0.1"))
    seed: int = 0
    classes_file: str = "classes.json"

    export_onnx: bool = True
    onnx_imgsz: int = Field(default=1280, ge=32)
    onnx_batch: int = Field(default=4, ge=1)
    onnx_opset: int | None = Field(default=None, ge=7)
    onnx_dynamic: bool = False
    onnx_half: bool = False
    onnx_nms: bool = True
    onnx_parity: bool = True
    onnx_parity_tolerance: float = Field(default=0.01, ge=0, le=1, allow_inf_nan=False)
    onnx_parity_max_images: int = Field(default=1000, ge=1)
    export_tensorrt: bool = False

    key_file: Path = Path(contract.ENCRYPTION_KEY_FILE)
    key_file_explicit: bool = False
    key_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")

    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "models"
    s3_region: str = "us-east-1"
    #: Mirror every verified checkpoint to S3 (encrypted) and restore from there (see :mod:`.mirror`).
    mirror_checkpoints: bool = False
    promote: bool = False

    api_url: str | None = None
    api_email: str | None = None
    api_password: SecretStr | None = None
    api_folder: str | None = None

    #: MLflow tracking (see :mod:`.tracking`): off without a URI.
    mlflow_uri: str | None = None
    mlflow_experiment: str = "azaion"
    mlflow_model_name: str | None = None
    mlflow_log_weights: bool = False

    heartbeat_file: Path = Path(contract.HEARTBEAT_FILE)
    image: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _weights_of_another_run(cls, data: Any) -> Any:
        # TRAINING_FROM_RUN names a run in this namespace; its best weights are
        # where this layout keeps every run's output.
        if isinstance(data, dict) and data.get("from_run") and isinstance(data.get("layout"), DataLayout):
            layout: DataLayout = data["layout"]
            try:
                weights = layout.run_dir(data.get("resource_namespace", "local"), data["from_run"]) / "weights/best.pt"
            except UnsafePathError as error:
                raise ValueError(f"from_run: {error}") from None
            data = {**data, "model": str(weights.relative_to(layout.root))}
        return data

    @field_validator("resource_name", "resource_namespace")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return safe_name(value)

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        # -1 (or a fraction, not offered here) asks ultralytics for auto-batch.
        if value == 0 or value < -1:
            raise ValueError("must be >= 1, or -1 for automatic batch size")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        allowed = value in {"auto", "cpu", "mps"} or all(
            part.strip().isdigit() for part in value.removeprefix("cuda:").split(",")
        )
        if not allowed:
            raise ValueError(f"expected auto, cpu, a GPU index or list (0,1), cuda:N: {value!r}")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        refused = sorted(set(value) - ALLOWED_EXTRA_ARGS)
        if refused:
            raise ValueError(f"not allowed: {', '.join(refused)} (allowed: {', '.join(sorted(ALLOWED_EXTRA_ARGS))})")
        return value

    @field_validator("classes_file")
    @classmethod
    def _classes_file(cls, value: str, info: ValidationInfo) -> str:
        layout = info.data.get("layout")
        if layout is not None:
            safe_child(layout.root, value)
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str, info: ValidationInfo) -> str:
        if _is_builtin_model_name(value):
            return value
        if not value.endswith((".pt", ".yaml", ".yml")):
            raise ValueError(f"must be a model .yaml name or a .pt path: {value!r}")
        layout = info.data.get("layout")
        if layout is not None:
            safe_child(layout.root, value)
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if any(part in {"", ".", ".."} for part in value.split("/")) and value:
            raise ValueError(f"not a clean key prefix: {value!r}")
        return value

    @field_validator("api_url", "s3_endpoint", "mlflow_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL: {value!r}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainingSettings:
        if self.mirror_checkpoints and not self.s3_bucket:
            raise ValueError("S3_MIRROR_CHECKPOINTS needs S3_BUCKET (the checkpoints are mirrored to that bucket)")
        if self.api_url:
            missing = [
                name
                for name, val in (
                    ("AZAION_API_EMAIL", self.api_email),
                    ("AZAION_API_PASSWORD", self.api_password),
                    ("AZAION_API_FOLDER", self.api_folder),
                    ("S3_BUCKET", self.s3_bucket),
                )
                if not val
            ]
            if missing:
                raise ValueError(f"AZAION_API_URL (split upload) also needs {', '.join(missing)}")
            if self.api_folder:
                safe_name(self.api_folder)
        return self

    # Derived values -------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir(self.resource_namespace, self.resource_name)

    @property
    def dataset_dir(self) -> Path:
        return self.layout.dataset_dir(self.resource_namespace, self.resource_name)

    @property
    def classes_path(self) -> Path:
        return safe_child(self.layout.root, self.classes_file)

    @property
    def publishing(self) -> bool:
        return bool(self.s3_bucket)

    @property
    def registered_model_name(self) -> str:
        """The MLflow registered model of the run's published versions."""
        return self.mlflow_model_name or f"azaion-{self.resource_namespace}"

    def model_source(self) -> str:
        """What to hand to ``YOLO()``: a built-in YAML name or an absolute path."""
        if _is_builtin_model_name(self.model):
            return self.model
        return str(safe_child(self.layout.root, self.model))


def _is_builtin_model_name(model: str) -> bool:
    """A bare ``*.yaml`` name (``yolo26m.yaml``) that ultralytics ships."""
    return "/" not in model and model.endswith((".yaml", ".yml"))


# How each setting is parsed from its variable; parsers raise ValueError with
# a short reason. The variable names come from the contract's table (the spec
# fields the operator passes) and from the pod contract (what it sets itself);
# the rest are for runs by hand and the split-upload mode.
_PARSERS: dict[str, Any] = {
    "model": str.strip,
    "from_run": str.strip,
    "epochs": int,
    "batch_size": int,
    "imgsz": int,
    "save_period": int,
    "checkpoint_interval_minutes": float,
    "workers": int,
    "patience": int,
    "optimizer": str.strip,
    "device": str,
    "extra_args": json.loads,
    "source": str.strip,
    "split": parse_split,
    "seed": int,
    "classes_file": str.strip,
    "export_onnx": _bool,
    "onnx_imgsz": int,
    "onnx_batch": int,
    "onnx_opset": int,
    "onnx_dynamic": _bool,
    "onnx_half": _bool,
    "onnx_nms": _bool,
    "onnx_parity": _bool,
    "onnx_parity_tolerance": float,
    "onnx_parity_max_images": int,
    "export_tensorrt": _bool,
    "key_file": Path,
    "s3_endpoint": str.strip,
    "s3_bucket": str.strip,
    "s3_prefix": str.strip,
    "s3_region": str.strip,
    "mirror_checkpoints": _bool,
    "promote": _bool,
    "mlflow_uri": str.strip,
    "mlflow_experiment": str.strip,
    "mlflow_model_name": str.strip,
    "mlflow_log_weights": _bool,
}
_ENV_FIELDS: dict[str, tuple[str, Any]] = {
    contract.ENV_RESOURCE_NAME: ("resource_name", str),
    contract.ENV_RESOURCE_NAMESPACE: ("resource_namespace", str),
    **{b.env: (b.setting, _PARSERS[b.setting]) for b in TRAINING_ENV if b.setting is not None},
    "ENCRYPTION_KEY_ID": ("key_id", str.strip),
    "AZAION_API_URL": ("api_url", str.strip),
    "AZAION_API_EMAIL": ("api_email", str.strip),
    "AZAION_API_PASSWORD": ("api_password", str),
    "AZAION_API_FOLDER": ("api_folder", str.strip),
    contract.ENV_HEARTBEAT_FILE: ("heartbeat_file", Path),
    contract.ENV_IMAGE: ("image", str.strip),
}
_FIELD_TO_ENV = {field: env for env, (field, _) in _ENV_FIELDS.items()}


def load_settings(env: Mapping[str, str] | None = None) -> TrainingSettings:
    """Build the settings from ``env``; raise :class:`EnvError` naming every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in (contract.ENV_DATA_DIR, contract.ENV_DATA_SEED_DIR, contract.ENV_DATA_DELETED_DIR):
        if name in env:
            try:
                safe_name(env[name])
            except UnsafePathError as error:
                problems.append(f"{name}: {error}")
    if not problems:
        layout = DataLayout.from_env(env)
        # Absolute from here on: data.yaml and checkpoints record these paths.
        values["layout"] = dataclasses.replace(layout, root=layout.root.absolute())
    for name, (field, parse) in _ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or (raw.strip() == "" and field != "resource_name"):
            continue
        try:
            values[field] = parse(raw)
        except (ValueError, TypeError) as error:
            problems.append(f"{name}: {error}")
    values["key_file_explicit"] = "ENCRYPTION_KEY_FILE" in env
    if not env.get(contract.ENV_RESOURCE_NAME):
        problems.append(f"{contract.ENV_RESOURCE_NAME}: required (the TrainingRun's name)")
        values.pop("resource_name", None)
    if problems or "layout" not in values:
        # Validate what parsed anyway, so the one message lists everything at once.
        values.setdefault("layout", DataLayout(root=Path(contract.DEFAULT_ROOT_DIR)))
        values.setdefault("resource_name", "placeholder")
    try:
        settings = TrainingSettings(**values)
    except ValidationError as error:
        problems.extend(_describe(error))
        settings = None
    if problems:
        raise EnvError("invalid training settings:\n  - " + "\n  - ".join(problems))
    assert settings is not None
    return settings


def _describe(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        where = _FIELD_TO_ENV.get(field, field or "settings")
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines
