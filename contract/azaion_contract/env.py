"""Which spec field reaches a workload through which environment variable.

One table per workload. The operator's builders walk it to fill a pod's
environment from the resource's spec; the workloads' settings loaders take
from it which variable fills which setting. A spec field is therefore named
once, here, and a unit test fails when a spec field is neither in a table nor
listed in ``*_POD_SPEC_FIELDS`` (what the operator turns into the pod spec
itself), or when a spec default and the workload's default disagree, so a run
by hand and a run on the cluster behave the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from azaion_contract import pod
from azaion_contract.models.annotationconsumer import AnnotationConsumerSpec
from azaion_contract.models.trainingrun import TrainingRunSpec


@dataclass(frozen=True)
class SecretKey:
    """A value the kubelet fills from a Secret: the spec names it, never holds it."""

    secret: str
    key: str
    #: The variable is left unset when the Secret lacks the key (the pod still starts).
    optional: bool = False


@dataclass(frozen=True)
class Binding:
    """One environment variable of a workload pod."""

    env: str
    """The variable."""
    setting: str | None
    """The field of the workload's settings it fills; None where a library reads it (boto3's keys)."""
    fields: tuple[str, ...]
    """The spec fields it carries (Python attribute paths, e.g. ``training.epochs``)."""
    value: Callable[[Any], object]
    """The variable's value for a spec; None leaves the variable unset (the workload's default)."""


def encode(value: object) -> str:
    """How a value is written into the environment (and what the loaders parse)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _field(path: str) -> Callable[[Any], object]:
    def get(spec: Any) -> object:
        value = spec
        for part in path.split("."):
            value = getattr(value, part, None)
            if value is None:
                return None
        return value

    return get


def _simple(env: str, setting: str, path: str) -> Binding:
    return Binding(env, setting, (path,), _field(path))


def _split(spec: TrainingRunSpec) -> str:
    split = spec.dataset.split
    return f"{split.train / 100},{split.valid / 100},{split.test / 100}"


def _secret_key(
    ref_of: Callable[[TrainingRunSpec], Any], which: str, optional: bool = False
) -> Callable[[TrainingRunSpec], SecretKey | None]:
    """The Secret key named by the ``which`` field of the reference ``ref_of`` finds (None: no reference)."""

    def get(spec: TrainingRunSpec) -> SecretKey | None:
        ref = ref_of(spec)
        return None if ref is None else SecretKey(ref.name, getattr(ref, which), optional)

    return get


def _s3_credentials(spec: TrainingRunSpec) -> Any:
    return spec.publish.s3.credentials_secret_ref if spec.publish.s3 is not None else None


def _mlflow_credentials(spec: TrainingRunSpec) -> Any:
    return spec.tracking.mlflow.credentials_secret_ref if spec.tracking.mlflow is not None else None


TRAINING_ENV: Final[tuple[Binding, ...]] = (
    _simple("TRAINING_MODEL", "model", "model"),
    # The workload resolves another run's weights in its own data layout.
    _simple("TRAINING_FROM_RUN", "from_run", "from_run"),
    _simple("TRAINING_EPOCHS", "epochs", "training.epochs"),
    _simple("TRAINING_BATCH_SIZE", "batch_size", "training.batch"),
    _simple("TRAINING_IMGSZ", "imgsz", "training.imgsz"),
    _simple("TRAINING_SAVE_PERIOD", "save_period", "training.save_period"),
    _simple(
        "TRAINING_CHECKPOINT_INTERVAL_MINUTES", "checkpoint_interval_minutes", "training.checkpoint_interval_minutes"
    ),
    _simple("TRAINING_WORKERS", "workers", "training.workers"),
    _simple("TRAINING_PATIENCE", "patience", "training.patience"),
    _simple("TRAINING_OPTIMIZER", "optimizer", "training.optimizer"),
    Binding(
        "TRAINING_EXTRA_ARGS",
        "extra_args",
        ("training.extra_args",),
        lambda spec: spec.training.extra_args or None,
    ),
    # Every GPU the pod holds ("auto" resolves to all visible devices), or the CPU.
    Binding("TRAINING_DEVICE", "device", ("resources.gpus",), lambda spec: "auto" if spec.resources.gpus else "cpu"),
    _simple("DATASET_SOURCE", "source", "dataset.source"),
    Binding(
        "DATASET_SPLIT",
        "split",
        ("dataset.split.train", "dataset.split.valid", "dataset.split.test"),
        _split,
    ),
    _simple("DATASET_SEED", "seed", "dataset.seed"),
    _simple("DATASET_CLASSES_FILE", "classes_file", "dataset.classes_file"),
    _simple("EXPORT_ONNX", "export_onnx", "export.onnx.enabled"),
    _simple("EXPORT_ONNX_IMGSZ", "onnx_imgsz", "export.onnx.imgsz"),
    _simple("EXPORT_ONNX_BATCH", "onnx_batch", "export.onnx.batch"),
    _simple("EXPORT_ONNX_OPSET", "onnx_opset", "export.onnx.opset"),
    _simple("EXPORT_ONNX_DYNAMIC", "onnx_dynamic", "export.onnx.dynamic"),
    _simple("EXPORT_ONNX_HALF", "onnx_half", "export.onnx.half"),
    _simple("EXPORT_ONNX_NMS", "onnx_nms", "export.onnx.nms"),
    _simple("EXPORT_ONNX_PARITY", "onnx_parity", "export.onnx.parity.enabled"),
    _simple("EXPORT_ONNX_PARITY_TOLERANCE", "onnx_parity_tolerance", "export.onnx.parity.tolerance"),
    _simple("EXPORT_ONNX_PARITY_MAX_IMAGES", "onnx_parity_max_images", "export.onnx.parity.max_images"),
    _simple("EXPORT_TENSORRT", "export_tensorrt", "export.tensorrt.enabled"),
    _simple("PUBLISH_PROMOTE", "promote", "publish.promote"),
    # The key itself is a Secret volume mounted at this path.
    Binding(
        "ENCRYPTION_KEY_FILE",
        "key_file",
        ("publish.encryption_key_secret_ref.name", "publish.encryption_key_secret_ref.key"),
        lambda spec: pod.ENCRYPTION_KEY_FILE if spec.publish.encryption_key_secret_ref else None,
    ),
    _simple("S3_BUCKET", "s3_bucket", "publish.s3.bucket"),
    _simple("S3_PREFIX", "s3_prefix", "publish.s3.prefix"),
    _simple("S3_ENDPOINT", "s3_endpoint", "publish.s3.endpoint"),
    _simple("S3_REGION", "s3_region", "publish.s3.region"),
    _simple("S3_MIRROR_CHECKPOINTS", "mirror_checkpoints", "publish.s3.mirror_checkpoints"),
    Binding(
        "AWS_ACCESS_KEY_ID",
        None,
        ("publish.s3.credentials_secret_ref.name", "publish.s3.credentials_secret_ref.access_key_id_key"),
        _secret_key(_s3_credentials, "access_key_id_key"),
    ),
    Binding(
        "AWS_SECRET_ACCESS_KEY",
        None,
        ("publish.s3.credentials_secret_ref.secret_access_key_key",),
        _secret_key(_s3_credentials, "secret_access_key_key"),
    ),
    _simple("TRACKING_MLFLOW_URI", "mlflow_uri", "tracking.mlflow.tracking_uri"),
    _simple("TRACKING_MLFLOW_EXPERIMENT", "mlflow_experiment", "tracking.mlflow.experiment_name"),
    _simple("TRACKING_MLFLOW_MODEL_NAME", "mlflow_model_name", "tracking.mlflow.registered_model_name"),
    _simple("TRACKING_MLFLOW_LOG_WEIGHTS", "mlflow_log_weights", "tracking.mlflow.log_weights"),
    # Read by the MLflow client itself, like boto3's keys.
    Binding(
        "MLFLOW_TRACKING_USERNAME",
        None,
        ("tracking.mlflow.credentials_secret_ref.name", "tracking.mlflow.credentials_secret_ref.username_key"),
        _secret_key(_mlflow_credentials, "username_key", optional=True),
    ),
    Binding(
        "MLFLOW_TRACKING_PASSWORD",
        None,
        ("tracking.mlflow.credentials_secret_ref.password_key",),
        _secret_key(_mlflow_credentials, "password_key", optional=True),
    ),
    Binding(
        "MLFLOW_TRACKING_TOKEN",
        None,
        ("tracking.mlflow.credentials_secret_ref.token_key",),
        _secret_key(_mlflow_credentials, "token_key", optional=True),
    ),
)

#: TrainingRun spec fields the operator turns into the Job and pod spec (or
#: keeps for itself), not into the trainer's environment.
TRAINING_POD_SPEC_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "storage.claim_name",  # the data volume
        "resources.cpu",  # container resources
        "resources.memory",
        "resources.shm_size",  # the /dev/shm emptyDir
        "resources.node_selector",  # placement
        "resources.tolerations",
        "resources.runtime_class_name",
        "resources.priority_class_name",
        "queue_name",  # the Job's Kueue queue label
        "workload_priority_class",  # the Job's Kueue priority-class label
        "image",  # the container image (the resolved one also reaches AZAION_IMAGE)
        "failure_policy.max_failures",  # the operator's retry budgets
        "failure_policy.max_preemptions",
        "failure_policy.permanent_exit_codes",  # the Job's podFailurePolicy
        "failure_policy.backoff_seconds",
        "active_deadline_seconds",  # the Job's activeDeadlineSeconds
        "ttl_seconds_after_finished",  # the operator's clean-up
        "suspend",  # the operator deletes the attempt's Job
        "priority",  # the operator's GPU queue
        "liveness_timeout_seconds",  # the liveness probe's --max-age
        "termination_grace_period_seconds",
        "pod_annotations",
        "pod_labels",
    }
)


def _consumer_secret(which: str) -> Callable[[AnnotationConsumerSpec], SecretKey]:
    def get(spec: AnnotationConsumerSpec) -> SecretKey:
        ref = spec.rabbitmq.credentials_secret_ref
        return SecretKey(ref.name, getattr(ref, which))

    return get


CONSUMER_ENV: Final[tuple[Binding, ...]] = (
    _simple("RABBITMQ_HOST", "host", "rabbitmq.host"),
    _simple("RABBITMQ_PORT", "port", "rabbitmq.port"),
    _simple("RABBITMQ_VHOST", "vhost", "rabbitmq.vhost"),
    _simple("RABBITMQ_STREAM", "stream", "rabbitmq.stream"),
    _simple("RABBITMQ_TLS", "tls", "rabbitmq.tls.enabled"),
    # The CA is a Secret volume mounted at this path.
    Binding(
        "RABBITMQ_TLS_CA_FILE",
        "tls_ca_file",
        ("rabbitmq.tls.ca_secret_ref.name", "rabbitmq.tls.ca_secret_ref.key"),
        lambda spec: pod.CONSUMER_TLS_CA_FILE if spec.rabbitmq.tls.ca_secret_ref else None,
    ),
    Binding(
        "RABBITMQ_USER",
        "user",
        ("rabbitmq.credentials_secret_ref.name", "rabbitmq.credentials_secret_ref.username_key"),
        _consumer_secret("username_key"),
    ),
    Binding(
        "RABBITMQ_PASSWORD",
        "password",
        ("rabbitmq.credentials_secret_ref.password_key",),
        _consumer_secret("password_key"),
    ),
    _simple("QUEUE_START_FROM", "start_from", "start_from"),
    _simple("QUEUE_COMMIT_EVERY", "commit_every", "offset_commit.every_messages"),
    _simple("QUEUE_COMMIT_INTERVAL_MS", "commit_interval_ms", "offset_commit.interval_milliseconds"),
    _simple("QUEUE_DISK_WARN_PERCENT", "disk_warn_percent", "disk.warn_percent"),
    _simple("QUEUE_DISK_CRITICAL_PERCENT", "disk_critical_percent", "disk.critical_percent"),
)

#: AnnotationConsumer spec fields the operator turns into the Deployment, the
#: offset claim or its own health checks.
CONSUMER_POD_SPEC_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "image",
        "data_volume.claim_name",
        "offset_volume.size",
        "offset_volume.storage_class_name",
        "offset_volume.delete_policy",
        "resources.cpu",
        "resources.memory",
        "resources.node_selector",
        "resources.tolerations",
        "stall_after",  # the operator's Stalled condition
    }
)


def env_name(table: Iterable[Binding], setting: str) -> str:
    """The variable that fills ``setting`` (for the workloads' pydantic aliases)."""
    for binding in table:
        if binding.setting == setting:
            return binding.env
    raise KeyError(setting)
