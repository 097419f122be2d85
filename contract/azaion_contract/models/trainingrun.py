"""The TrainingRun custom resource: one YOLO training, from dataset to published model."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from azaion_contract.api import LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_TRAININGRUN, TRAININGRUN_KIND, TRAININGRUN_PLURAL
from azaion_contract.models.common import ApiModel, ReconciledStatus, SecretKeyRef, StatusModel, Toleration
from azaion_contract.models.rules import (
    DATA_ROOT_PATH,
    DNS_SUBDOMAIN,
    HTTP_URL,
    MAX_LABELS,
    Annotations,
    DnsSubdomain,
    Image,
    Labels,
    Quantity,
    Rule,
    SecretKey,
    cel_string,
    is_data_root_path,
)
from azaion_contract.pod import EXIT_PERMANENT
from azaion_contract.training_options import ALLOWED_EXTRA_ARGS, OPTIMIZERS

KIND = TRAININGRUN_KIND
PLURAL = TRAININGRUN_PLURAL
SINGULAR = "trainingrun"
SHORT_NAMES = ["tr"]


def cel(rule: str, message: str) -> dict[str, Any]:
    """A CEL validation rule for the CRD schema (evaluated by the API server)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


# Types of the ultralytics train() arguments that extraArgs may set; the keys
# are exactly the workload's allow-list (a unit test keeps the two equal).
_BOOLEAN_ARGS = {"cos_lr", "amp", "deterministic", "single_cls", "rect", "multi_scale", "val", "plots"}
_INTEGER_ARGS = {"close_mosaic", "nbs", "seed", "freeze"}
_STRING_ARGS = {"auto_augment", "cache"}


def _extra_arg_schema(name: str) -> dict[str, Any]:
    if name in _BOOLEAN_ARGS:
        return {"type": "boolean"}
    if name in _INTEGER_ARGS:
        return {"type": "integer"}
    if name in _STRING_ARGS:
        return {"type": "string"}
    return {"type": "number"}


ExtraArgs = Annotated[
    dict[str, bool | int | float | str],
    WithJsonSchema(
        {
            "type": "object",
            "properties": {name: _extra_arg_schema(name) for name in sorted(ALLOWED_EXTRA_ARGS)},
        }
    ),
    AfterValidator(lambda value: _only_allowed(value)),
]


def _only_allowed(value: dict[str, Any]) -> dict[str, Any]:
    refused = sorted(set(value) - ALLOWED_EXTRA_ARGS)
    if refused:
        raise ValueError(f"extraArgs may not set: {', '.join(refused)}")
    # The types the CRD schema gives each argument, so the operator refuses what the API server does.
    mistyped = sorted(name for name, arg in value.items() if not _has_type(arg, _extra_arg_schema(name)["type"]))
    if mistyped:
        raise ValueError(f"extraArgs of the wrong type: {', '.join(mistyped)}")
    return value


def _has_type(value: Any, json_type: str) -> bool:
    if json_type == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):  # a bool is an int in Python, never in JSON
        return False
    if json_type == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if json_type == "number":
        return isinstance(value, int | float)
    return isinstance(value, str)


class DatasetSource(StrEnum):
    VALIDATED = "validated"


class SplitRatios(ApiModel):
    """Percentages of the annotations that go to each part of the dataset."""

    cel_rules = (
        Rule(
            "self.train + self.valid + self.test == 100",
            "split percentages must add up to 100",
            lambda split: split.train + split.valid + split.test == 100,
        ),
    )

    train: int = Field(default=70, ge=1, le=100)
    """Percent of the images used for training."""
    valid: int = Field(default=20, ge=0, le=99)
    """Percent of the images used for validation."""
    test: int = Field(default=10, ge=0, le=99)
    """Percent of the images held out for testing."""


class DatasetSpec(ApiModel):
    """How the dataset is formed from the annotations on the data volume."""

    source: DatasetSource = DatasetSource.VALIDATED
    """Which annotations to train on: `validated` (the data/ folder)."""
    split: SplitRatios = Field(default_factory=SplitRatios)
    """Train/valid/test split in percent (70/20/10 by default)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the shuffle: the same seed and annotations give the same split."""
    classes_file: Annotated[str, Field(min_length=1, max_length=1024), DATA_ROOT_PATH] = "classes.json"
    """Class definitions, relative to the data root."""


class TrainingSpec(ApiModel):
    """ultralytics training arguments."""

    epochs: int = Field(
        default=120, ge=1, le=10000, json_schema_extra=cel("self == oldSelf", "epochs cannot change after creation")
    )
    """Number of epochs. Immutable: a resumed run keeps the epochs it started with."""
    batch: int = Field(default=11, ge=1, le=4096)
    """Images per batch (11 fills a 24 GB GPU at imgsz 1280 with a medium model)."""
    imgsz: int = Field(default=1280, ge=32, le=8192, multiple_of=32)
    """Training image size in pixels (a multiple of 32)."""
    save_period: int = Field(default=1, ge=1)
    """Save a checkpoint every this many epochs."""
    checkpoint_interval_minutes: int = Field(default=10, ge=0, le=1440)
    """Also save a mid-epoch checkpoint every this many minutes of training (0: only when stopped)."""
    workers: int = Field(default=8, ge=0, le=64)
    """Data loader worker processes."""
    patience: int = Field(default=100, ge=0)
    """Stop early after this many epochs without improvement (0 disables)."""
    optimizer: Literal[OPTIMIZERS] = "auto"  # type: ignore[valid-type]
    """Optimizer name, as ultralytics knows it."""
    extra_args: ExtraArgs = Field(default_factory=dict)
    """Further ultralytics train() arguments, from an allow-list (hyper-parameters and augmentation)."""


class ResourcesSpec(ApiModel):
    """What the training pod needs and where it may run."""

    gpus: int = Field(default=1, ge=0, le=16)
    """GPUs (nvidia.com/gpu) for the run; 0 trains on CPU and does not wait in the GPU queue."""
    cpu: Quantity | None = None
    """CPU request and limit, e.g. "8" (a positive quantity)."""
    memory: Quantity | None = None
    """Memory request and limit, e.g. "48Gi" (a positive quantity)."""
    shm_size: Quantity = "8Gi"
    """Size of the in-memory /dev/shm that data loader workers share (a positive quantity)."""
    node_selector: Labels = Field(default_factory=dict)
    """Node labels the pod must match."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=MAX_LABELS)
    """Taints the pod tolerates."""
    runtime_class_name: DnsSubdomain | None = None
    """Container runtime class; defaults to `nvidia` when gpus > 0 (k3s with the NVIDIA toolkit)."""
    priority_class_name: DnsSubdomain | None = None
    """PriorityClass of the training pod (cluster-level preemption)."""


class StorageSpec(ApiModel):
    """The data volume with the annotations, datasets and models."""

    claim_name: DnsSubdomain
    """PersistentVolumeClaim holding the data root; the run writes under models/<namespace>/<name>."""


class OnnxParity(ApiModel):
    """The export parity gate: the ONNX file is published only if it scores like the .pt it came from."""

    enabled: bool = True
    """Evaluate the ONNX file and the .pt on the validation split (mAP50-95) before encryption."""
    tolerance: float = Field(default=0.01, ge=0, le=1)
    """Largest drop in mAP50-95 (absolute, 0-1) the ONNX file may show below the .pt; more fails the run."""
    max_images: int = Field(default=1000, ge=1)
    """Evaluate on at most this many validation images (the first ones by name)."""


class OnnxExport(ApiModel):
    """ONNX export of the best model."""

    enabled: bool = True
    """Export ONNX after training."""
    imgsz: int = Field(default=1280, ge=32, le=8192, multiple_of=32)
    """Input image size of the exported model."""
    batch: int = Field(default=4, ge=1, le=256)
    """Batch size baked into the exported model."""
    opset: int | None = Field(default=None, ge=7, le=30)
    """ONNX opset; the exporter's default when unset."""
    dynamic: bool = False
    """Dynamic input shapes."""
    half: bool = False
    """FP16 weights (needs a GPU at export time)."""
    nms: bool = True
    """Put non-maximum suppression inside the model."""
    parity: OnnxParity = Field(default_factory=OnnxParity)
    """Compare the ONNX file's mAP50-95 with the .pt's before publishing (at the export imgsz vs the training one)."""


class TensorRTExport(ApiModel):
    """TensorRT engine export (only on a GPU node)."""

    enabled: bool = False
    """Build a TensorRT engine for the GPU the run trained on."""


class ExportSpec(ApiModel):
    """Model formats produced after training."""

    onnx: OnnxExport = Field(default_factory=OnnxExport)
    """ONNX export settings."""
    tensorrt: TensorRTExport = Field(default_factory=TensorRTExport)
    """TensorRT export settings."""


class S3CredentialsRef(ApiModel):
    """A Secret with the S3 access key pair."""

    name: DnsSubdomain
    """Name of the Secret."""
    access_key_id_key: SecretKey = "AWS_ACCESS_KEY_ID"
    """Key of the access key id in the Secret."""
    secret_access_key_key: SecretKey = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a key name, not a secret
    """Key of the secret access key in the Secret."""


# What S3 (and MinIO) accept as a bucket name; the AWS-only reserved prefixes
# and suffixes are left to the store, which may be another S3 implementation.
_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
_IPV4_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$"
S3_BUCKET = Rule(
    f"self.matches('{_BUCKET_PATTERN}') && !self.contains('..') && !self.matches('{cel_string(_IPV4_PATTERN)}')",
    "must be an S3 bucket name: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a "
    "letter or digit, without '..', and not an IP address",
    lambda bucket: (
        re.fullmatch(_BUCKET_PATTERN, bucket) is not None
        and ".." not in bucket
        and re.fullmatch(_IPV4_PATTERN, bucket) is None
    ),
)
# The trainer strips surrounding '/' and refuses empty, '.' and '..' segments.
_PREFIX_PATTERN = r"^/*([^/]+(/[^/]+)*)?/*$"
S3_PREFIX = Rule(
    f"self.matches('{_PREFIX_PATTERN}') && !self.split('/').exists(p, p == '.' || p == '..')",
    "must be a key prefix: segments separated by single '/', none of them '.' or '..'",
    lambda prefix: (
        re.fullmatch(_PREFIX_PATTERN, prefix) is not None and not any(part in (".", "..") for part in prefix.split("/"))
    ),
)


class S3Publish(ApiModel):
    """S3-compatible storage the encrypted model is published to."""

    endpoint: Annotated[str, Field(max_length=2048), HTTP_URL] | None = None
    """Endpoint URL (http:// or https://); AWS's when unset."""
    bucket: Annotated[str, Field(min_length=3, max_length=63), S3_BUCKET]
    """Bucket name: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit."""
    prefix: Annotated[str, Field(max_length=1024), S3_PREFIX] = "models"
    """Key prefix of published objects."""
    region: str | None = Field(default=None, max_length=64)
    """Region name."""
    credentials_secret_ref: S3CredentialsRef
    """Secret with the access keys (never put keys in the spec)."""
    mirror_checkpoints: bool = False
    """Also upload every verified checkpoint, encrypted with the model key, to \
<prefix>/checkpoints/<namespace>/<name>/ (the newest 3 end-of-epoch copies and the current mid-epoch one) and \
restore from there when the data volume holds no newer checkpoint, so an attempt can resume on a node that does \
not mount the volume the checkpoints were written to. Uploads run beside training and never fail it \
(status.checkpointMirror shows them); the copies stay after the run, like the local ones. The alternative: \
a ReadWriteMany data claim that every GPU node mounts."""


class PublishSpec(ApiModel):
    """Where the finished model goes."""

    cel_rules = (
        # The trainer only ever publishes the encrypted model.
        Rule(
            "!has(self.s3) || has(self.encryptionKeySecretRef)",
            "is required to publish to S3 (only the encrypted model is published)",
            lambda publish: publish.s3 is None or publish.encryption_key_secret_ref is not None,
            field="encryptionKeySecretRef",
        ),
    )

    s3: S3Publish | None = None
    """Publish the encrypted model and its manifest to S3-compatible storage."""
    encryption_key_secret_ref: SecretKeyRef | None = None
    """Secret key holding the 256-bit model encryption key (needed to publish)."""
    promote: bool = False
    """Make this run's best model the current one (models/azaion.pt) when it succeeds."""


class MlflowCredentialsRef(ApiModel):
    """A Secret with the tracking server's credentials: a username and password, or a token."""

    name: DnsSubdomain
    """Name of the Secret."""
    username_key: SecretKey = "username"
    """Key of the username in the Secret (HTTP basic auth; left out when the Secret lacks it)."""
    password_key: SecretKey = "password"  # noqa: S105 - a key name, not a secret
    """Key of the password in the Secret (left out when the Secret lacks it)."""
    token_key: SecretKey = "token"  # noqa: S105 - a key name, not a secret
    """Key of a bearer token in the Secret (left out when the Secret lacks it)."""


# An MLflow experiment or registered model name: no '/' (the registry's URIs use it) and no ':'.
_MLFLOW_NAME = Rule(
    "self.matches('^[A-Za-z0-9][A-Za-z0-9 ._-]*$')",
    "must start with a letter or digit and hold only letters, digits, ' ', '.', '_' and '-'",
    lambda name: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]*", name) is not None,
)


class MlflowTracking(ApiModel):
    """An MLflow tracking server the run logs to. A server that is down never fails or stalls training:
    the trainer retries in the background and the Tracking condition says what happened."""

    tracking_uri: Annotated[str, Field(max_length=2048), HTTP_URL]
    """The tracking server (http:// or https://)."""
    experiment_name: Annotated[str, Field(min_length=1, max_length=256), _MLFLOW_NAME] = "azaion"
    """Experiment the run is logged in (created when missing); the MLflow run is named <namespace>/<name>."""
    registered_model_name: Annotated[str, Field(min_length=1, max_length=256), _MLFLOW_NAME] | None = None
    """Registered model that gets a version per published run (its source: the encrypted model's S3 URI);
    unset: azaion-<namespace>."""
    log_weights: bool = False
    """Also upload the unencrypted best weights (.pt) to the server; off: only the ONNX export, curves and
    the dataset manifest go there."""
    credentials_secret_ref: MlflowCredentialsRef | None = None
    """Secret with the server's credentials (never put them in the spec)."""


class TrackingSpec(ApiModel):
    """Experiment tracking."""

    mlflow: MlflowTracking | None = None
    """Log parameters, per-epoch metrics and artifacts to MLflow, and register the published model."""


class FailurePolicy(ApiModel):
    """How failures and preemptions are counted and when the run gives up."""

    max_failures: int = Field(default=3, ge=1, le=100)
    """Attempts that may fail (non-zero exit, OOM...) before the run is Failed."""
    max_preemptions: int = Field(default=20, ge=0, le=1000)
    """Pod disruptions (eviction, preemption, node loss) tolerated; they never count as failures."""
    # 1-255: what a container can exit with, and the Job refuses 0 in its failure policy.
    permanent_exit_codes: list[Annotated[int, Field(ge=1, le=255)]] = Field(
        default_factory=lambda: [EXIT_PERMANENT], max_length=32
    )
    """Exit codes (1-255) that fail the run at once without retry (bad configuration or data); empty: always retry."""
    backoff_seconds: int = Field(default=10, ge=0, le=3600)
    """Delay before the first retry; doubles with every failure (capped at 10 minutes)."""


# Labels of a training pod that others set: the Job controller's (the Job is
# refused when the template has them) and the operator's own (they would be overwritten).
RESERVED_POD_LABELS = (
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
    LABEL_ATTEMPT,
    LABEL_MANAGED_BY,
    LABEL_TRAININGRUN,
    "app.kubernetes.io/name",
)
_MODEL_SUFFIXES = (".pt", ".yaml", ".yml")


def _is_model(model: str) -> bool:
    return model.endswith(_MODEL_SUFFIXES) and is_data_root_path(model)


class TrainingRunSpec(ApiModel):
    """Desired state of a TrainingRun."""

    cel_rules = (
        Rule(
            "has(self.model) != has(self.fromRun)",
            "set exactly one of spec.model and spec.fromRun",
            lambda spec: (spec.model is None) != (spec.from_run is None),
        ),
        # The trainer skips TensorRT without a CUDA device: say so at apply time.
        Rule(
            "!self.export.tensorrt.enabled || self.resources.gpus > 0",
            "needs resources.gpus > 0 (a TensorRT engine is built on the GPU it runs on)",
            lambda spec: not spec.export.tensorrt.enabled or spec.resources.gpus > 0,
            field="export.tensorrt.enabled",
        ),
    )

    model: (
        Annotated[
            str,
            Field(min_length=1, max_length=1024),
            Rule(
                "(self.endsWith('.pt') || self.endsWith('.yaml') || self.endsWith('.yml'))"
                " && !self.startsWith('/') && !self.split('/').exists(p, p == '..')",
                "must be a model .yaml name (yolo26m.yaml) or a .pt/.yaml path relative to the data root "
                "(not starting with '/', without '..')",
                _is_model,
            ),
        ]
        | None
    ) = None
    """Base model: a model YAML name (yolo26m.yaml) or a .pt file relative to the data root."""
    # A TrainingRun's name has at most 63 characters (the CRD's metadata.name rule).
    from_run: Annotated[str, Field(min_length=1, max_length=63), DNS_SUBDOMAIN] | None = None
    """Fine-tune the best model of this (succeeded) TrainingRun in the same namespace."""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    """Dataset formation."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Training arguments."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Compute resources and placement."""
    image: Image | None = None
    """Training image; the operator's configured default when unset. Recorded in status at start."""
    storage: StorageSpec
    """The data volume."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Export formats."""
    publish: PublishSpec = Field(default_factory=PublishSpec)
    """Publishing and promotion."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """Experiment tracking (MLflow)."""
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy)
    """Retry budgets."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the run (DeadlineExceeded) when it has been running longer than this, over all attempts."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the run's Jobs and pods this long after it finished (the TrainingRun and its artifacts stay)."""
    suspend: bool = False
    """Stop the active attempt (it checkpoints first) and hold the run until set back to false."""
    priority: int = Field(default=0, ge=-1000, le=1000)
    """Queue priority: higher runs are admitted to free GPUs first."""
    queue_name: DnsSubdomain | None = None
    """Kueue LocalQueue of the run's Jobs: Kueue admits them instead of the built-in GPU queue
    (the operator's default queue when its queueing is kueue)."""
    workload_priority_class: DnsSubdomain | None = None
    """Kueue WorkloadPriorityClass of the run's Jobs: their order and preemption in Kueue, without
    changing the pods' scheduling priority (resources.priorityClassName does both). Kueue queueing only."""
    liveness_timeout_seconds: int = Field(default=1800, ge=60)
    """Restart a trainer whose progress heartbeat is older than this (a hung process)."""
    termination_grace_period_seconds: int = Field(default=300, ge=30, le=86400)
    """Time a stopping trainer gets to write its checkpoint."""
    pod_annotations: Annotations = Field(default_factory=dict)
    """Extra annotations on the training pod."""
    pod_labels: Annotated[
        Labels,
        Rule(
            f"!self.exists(k, k in {list(RESERVED_POD_LABELS)})",
            f"may not set the labels the Job controller and the operator set: {', '.join(RESERVED_POD_LABELS)}",
            lambda labels: not set(labels) & set(RESERVED_POD_LABELS),
        ),
    ] = Field(default_factory=dict)
    """Extra labels on the training pod."""


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class Metrics(StatusModel):
    """Validation metrics of the latest epoch."""

    map50: float | None = None
    """mAP at IoU 0.5."""
    map50_95: float | None = Field(default=None, alias="map50_95")
    """mAP averaged over IoU 0.5..0.95."""
    precision: float | None = None
    """Box precision."""
    recall: float | None = None
    """Box recall."""
    box_loss: float | None = None
    """Box regression loss."""
    cls_loss: float | None = None
    """Classification loss."""
    dfl_loss: float | None = None
    """Distribution focal loss."""


class ResumePoint(StatusModel):
    """Where an attempt started training: epochs completed and batches of the next one done."""

    epoch: int | None = None
    """Epochs completed before it (0: from the start)."""
    batch: int | None = None
    """Batches of the following epoch done before it (a mid-epoch checkpoint); 0 at an epoch boundary."""
    redone_batches: int | None = None
    """Batches the interrupted attempt had trained past this point, trained again."""
    pod: str | None = None
    """The pod that resumed."""
    source: str | None = None
    """The S3 URI of the mirrored checkpoint it was restored from (publish.s3.mirrorCheckpoints); \
unset when the checkpoint was on the data volume."""


class Progress(StatusModel):
    """Progress reported by the training pod."""

    step: str | None = None
    """Current step: dataset, training, export, encrypt, publish, promote or done."""
    epoch: int | None = None
    """Last finished epoch (1-based)."""
    epochs: int | None = None
    """Total epochs."""
    percent: float | None = None
    """Training progress in percent."""
    eta_seconds: int | None = None
    """Estimated seconds until training finishes."""
    metrics: Metrics | None = None
    """Metrics of the last epoch."""
    best_epoch: int | None = None
    """Epoch with the best fitness so far."""
    resumed_from: ResumePoint | None = None
    """Where the current attempt started training."""
    updated_at: str | None = None
    """When the pod last reported (RFC 3339)."""


class Checkpoint(StatusModel):
    """The newest verified checkpoint."""

    epoch: int | None = None
    """Epoch the checkpoint was saved after."""
    batch: int | None = None
    """Batches of the following epoch done (a mid-epoch checkpoint); 0 at an epoch boundary."""
    path: str | None = None
    """Path relative to the data root."""
    sha256: str | None = None
    """SHA-256 of the checkpoint file."""
    saved_at: str | None = None
    """When it was saved (RFC 3339)."""


class CheckpointMirror(StatusModel):
    """The S3 copies of the run's verified checkpoints (publish.s3.mirrorCheckpoints)."""

    uri: str | None = None
    """The newest mirrored checkpoint (encrypted with the model key)."""
    epoch: int | None = None
    """Epoch that checkpoint was saved after."""
    batch: int | None = None
    """Batches of the following epoch done (a mid-epoch checkpoint); 0 at an epoch boundary."""
    mirrored_at: str | None = None
    """When its upload completed (RFC 3339)."""
    failures: int | None = None
    """Uploads that failed since the pod started (training goes on without them)."""
    last_error: str | None = None
    """Why the latest failed upload failed."""
    last_error_at: str | None = None
    """When the latest upload failed (RFC 3339)."""


class MlflowStatus(StatusModel):
    """What the trainer logged to the MLflow tracking server (tracking.mlflow)."""

    state: Literal["Logging", "Retrying", "Logged"] | None = None
    """Logging: the server takes what the trainer sends; Retrying: it did not, and the trainer keeps what it
    could not send and tries again (training goes on); Logged: everything (the model version too, when the run
    published one) is there and the MLflow run is ended."""
    run_id: str | None = None
    """The MLflow run."""
    experiment_id: str | None = None
    """The MLflow experiment."""
    model_version: str | None = None
    """The registered model version of the published model."""
    pending: int | None = None
    """Records (metrics, parameters, artifacts) waiting to be sent."""
    failures: int | None = None
    """Requests that failed since the pod started."""
    last_error: str | None = None
    """Why the latest request failed."""
    updated_at: str | None = None
    """When this was reported (RFC 3339)."""


class DatasetArtifact(StatusModel):
    """The formed dataset."""

    path: str | None = None
    """Dataset directory relative to the data root."""
    train: int | None = None
    """Images in the training split."""
    valid: int | None = None
    """Images in the validation split."""
    test: int | None = None
    """Images in the test split."""
    corrupted: int | None = None
    """Annotations moved to data-corrupted/ by label validation."""
    manifest_sha256: str | None = None
    """SHA-256 of the dataset manifest."""


class ParityResult(StatusModel):
    """The export parity gate's figures: mAP50-95 of the .pt and of the ONNX file on the same validation images."""

    pt_map50_95: float | None = Field(default=None, alias="ptMap50_95")
    """mAP50-95 of the best .pt at the training imgsz."""
    onnx_map50_95: float | None = Field(default=None, alias="onnxMap50_95")
    """mAP50-95 of the ONNX file at its export imgsz."""
    tolerance: float | None = None
    """Largest drop below the .pt the gate allowed."""
    images: int | None = None
    """Validation images both were evaluated on."""
    passed: bool | None = None
    """Whether the ONNX file was within the tolerance; unset when the gate could not run (see skipped)."""
    skipped: str | None = None
    """Why the gate did not run (no validation images)."""


class Artifacts(StatusModel):
    """What the run produced."""

    dataset: DatasetArtifact | None = None
    """The dataset the run trained on."""
    model: str | None = None
    """Best model (.pt) relative to the data root."""
    model_sha256: str | None = None
    """SHA-256 of the best model."""
    onnx: str | None = None
    """ONNX export relative to the data root."""
    onnx_sha256: str | None = None
    """SHA-256 of the ONNX file."""
    onnx_parity: ParityResult | None = None
    """The export parity gate: both mAP50-95 figures and whether the ONNX file passed."""
    encrypted: str | None = None
    """Encrypted model relative to the data root."""
    encrypted_sha256: str | None = None
    """SHA-256 of the encrypted file."""
    tensorrt: str | None = None
    """TensorRT engine relative to the data root (built only on a GPU, for that GPU kind)."""
    tensorrt_sha256: str | None = None
    """SHA-256 of the TensorRT engine."""
    tensorrt_uri: str | None = None
    """URI of the published (encrypted) TensorRT engine."""
    manifest_uri: str | None = None
    """URI of the published manifest (written last: its presence means the publish is complete)."""
    published_uris: list[str] | None = None
    """URIs of every published object."""
    promoted: bool | None = None
    """Whether the model became the current one."""
    results_csv_uri: str | None = None
    """URI of the published per-epoch training results (ultralytics' results.csv), beside the model."""
    results_png_uri: str | None = None
    """URI of the published training curves (ultralytics' results.png), beside the model."""


class AttemptRecord(StatusModel):
    """The outcome of one attempt (one Job)."""

    attempt: int
    """Attempt number, from 1."""
    job_name: str
    """Name of the attempt's Job."""
    outcome: Literal["Running", "Succeeded", "Failed", "Preempted", "Stopped"]
    """Succeeded, Failed (counts against maxFailures), Preempted (disruption; counts against
    maxPreemptions) or Stopped (suspend)."""
    reason: str | None = None
    """Machine-readable reason, e.g. Error, OOMKilled, PermanentError, Evicted."""
    exit_code: int | None = None
    """Exit code of the trainer container, when it terminated."""
    message: str | None = None
    """What happened, in words."""
    resumed_from: ResumePoint | None = None
    """Where the attempt's training started (its pod's progress.resumedFrom)."""
    evictions: int | None = None
    """Times Kueue preempted the attempt's Job (each counts as a preemption; the Job waits to be admitted again)."""
    started_at: str | None = None
    """When the Job was created (RFC 3339)."""
    finished_at: str | None = None
    """When the outcome was observed (RFC 3339)."""


class TrainingRunStatus(ReconciledStatus):
    """Observed state.

    The operator writes phase, conditions and attempts; the pod writes progress,
    lastCheckpoint and artifacts. Neither touches the other's fields.
    """

    phase: Phase | None = None
    """Pending, Queued, Running, Succeeded, Failed or Suspended (conditions: Progressing, Succeeded, Failed)."""
    attempts: int | None = None
    """Jobs started so far."""
    failures: int | None = None
    """Attempts that failed (against failurePolicy.maxFailures)."""
    preemptions: int | None = None
    """Disruptions (against failurePolicy.maxPreemptions)."""
    attempt_history: list[AttemptRecord] | None = None
    """One record per attempt."""
    preempted_pods: list[str] | None = None
    """Pods lost to disruptions inside an attempt (the Job replaced them); each counts once as a preemption."""
    queue_position: int | None = None
    """Position in the GPU queue (1 = next) while Queued."""
    job_name: str | None = None
    """The active (or last) Job."""
    image: str | None = None
    """Image the run started with; kept for every attempt."""
    next_attempt_at: str | None = None
    """When the next attempt starts after a failure (RFC 3339)."""
    start_time: str | None = None
    """When the first attempt started (RFC 3339)."""
    completion_time: str | None = None
    """When the run finished (RFC 3339)."""
    rejected_generation: int | None = None
    """The spec generation whose Job the API server refused (condition ChildRejected); cleared by a changed spec."""
    progress: Progress | None = None
    """Training progress (written by the pod)."""
    last_checkpoint: Checkpoint | None = None
    """Newest verified checkpoint (written by the pod)."""
    checkpoint_mirror: CheckpointMirror | None = None
    """The checkpoints' S3 mirror, when publish.s3.mirrorCheckpoints is on (written by the pod)."""
    artifacts: Artifacts | None = None
    """Produced files and published objects (written by the pod)."""
    mlflow: MlflowStatus | None = None
    """What was logged to MLflow, when tracking.mlflow is set (written by the pod)."""
