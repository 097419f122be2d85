"""A corpus of custom resources for admission: what the API server must refuse, and accept.

Each kind has one small valid object and two lists built from it: invalid
cases (a few changes at dotted paths, and the field the refusal must name) and
valid variants. tests/integration/test_admission_corpus.py applies all of them
to the real API server (schema and CEL rules in the CRD); tests/unit/
test_admission_models.py hands the same specs to the pydantic models, which
the operator validates with.

Paths are dotted, with ``[i]`` for list items (``spec.resources.tolerations[0].key``);
a map whose keys contain dots is set whole. :data:`DELETE` removes a key.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

GROUP, VERSION = "ai.azaion.com", "v1alpha1"
DELETE: Any = object()
NAME = "admission"
DIGEST = "sha256:" + "0123456789abcdef" * 4


@dataclass(frozen=True)
class Case:
    """Changes to the base object, and the field its refusal names (None: a valid variant)."""

    changes: dict[str, Any]
    field: str | None = None
    #: False where only the API server checks it: the rule needs metadata (outside the spec
    #: model), or pydantic's lax mode coerces the value.
    model: bool = True
    label: str = ""

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        text = ",".join(f"{path}={_short(value)}" for path, value in self.changes.items())
        return re.sub(r"[^A-Za-z0-9_.=,:/\[\]+-]", "_", text)[:120]


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    base_spec: dict[str, Any]
    invalid: list[Case] = field(default_factory=list)
    valid: list[Case] = field(default_factory=list)

    def body(self, case: Case) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": {"name": NAME},
            "spec": copy.deepcopy(self.base_spec),
        }
        for path, value in case.changes.items():
            set_path(body, path, value if value is DELETE else copy.deepcopy(value))
        return body


def _short(value: Any) -> str:
    if value is DELETE:
        return "DELETE"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:30]}...({len(text)})"


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set (or, with DELETE, remove) ``path`` in ``obj``, creating the dicts and lists on the way."""
    steps: list[str | int] = [int(index) if index else name for name, index in _STEP.findall(path)]
    for step, following in pairwise(steps):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            while len(obj) <= step:
                obj.append(copy.deepcopy(empty))
            obj = obj[step]
        else:
            obj = obj.setdefault(step, empty)
    last = steps[-1]
    if value is DELETE:
        del obj[last]
    elif isinstance(last, int):
        while len(obj) <= last:
            obj.append(None)
        obj[last] = value
    else:
        obj[last] = value


def bad(path: str, *values: Any, named: str | None = None, model: bool = True) -> list[Case]:
    """One invalid case per value at ``path``; the refusal names ``named`` (default: ``path``)."""
    return [Case({path: value}, named or path, model) for value in values]


def good(path: str, *values: Any) -> list[Case]:
    return [Case({path: value}) for value in values]


def tolerations(path: str) -> list[Case]:
    """Tolerations the pod validation refuses (ValidateTolerations)."""
    item = f"{path}[0]"
    return [
        Case({path: [{"operator": "Exists", "value": "x"}]}, f"{item}.value"),
        Case({path: [{"key": "k", "operator": "Exists", "value": "v"}]}, f"{item}.value"),
        Case({path: [{"key": "k", "tolerationSeconds": 5}]}, f"{item}.effect"),
        Case({path: [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}, f"{item}.effect"),
        Case({path: [{"operator": "Equal", "value": "x"}]}, f"{item}.operator"),
        Case({path: [{}]}, f"{item}.operator"),
        Case({path: [{"key": "bad key", "operator": "Exists"}]}, f"{item}.key"),
        Case({path: [{"key": "example.com/", "operator": "Exists"}]}, f"{item}.key"),
        Case({path: [{"key": "k", "value": "bad value"}]}, f"{item}.value"),
        Case({path: [{"key": "k", "value": "v" * 64}]}, f"{item}.value"),
        Case({path: [{"key": "k", "effect": "Never"}]}, f"{item}.effect"),
        Case({path: [{"key": "k", "operator": "In"}]}, f"{item}.operator"),
        Case({path: [{"key": "k", "unknown": 1}]}, f"{item}.unknown"),
    ]


def label_maps(path: str) -> list[Case]:
    """Maps with keys or values a pod's labels (or nodeSelector) may not have."""
    return bad(
        path,
        {"Bad Key": "x"},
        {"a/b/c": "x"},
        {"example.com/": "x"},
        {"-lead": "x"},
        {"trail-": "x"},
        {"Example.com/k": "x"},
        {"k" * 64: "x"},
        {("p" * 254) + "/k": "x"},
        {"k": "bad value"},
        {"k": "-lead"},
        {"k": "v" * 64},
        {"k": "a/b"},
        {f"k{i}": "v" for i in range(65)},
    )


def quantities(path: str) -> list[Case]:
    """Malformed, negative and zero quantities."""
    return bad(path, "-4", "0", "0.0", "-1Gi", "abc", "1.2.3", "4 cores", "", "1GB", "Gi", "1Q", "1e")


# --- TrainingRun --------------------------------------------------------------

S3 = {"bucket": "azaion-models", "credentialsSecretRef": {"name": "s3-credentials"}}
KEY = {"name": "model-key", "key": "key"}
WITH_KEY = {"spec.publish.encryptionKeySecretRef": KEY}
REF = "spec.publish.encryptionKeySecretRef"
EXIT_CODES = "spec.failurePolicy.permanentExitCodes"


def _s3(path: str, *values: Any, named: str | None = None) -> list[Case]:
    """Publishing cases: S3 and the encryption key set, then ``path`` changed."""
    return [
        Case({"spec.publish.s3": S3, **WITH_KEY, f"spec.publish.s3.{path}": value}, named or f"spec.publish.s3.{path}")
        for value in values
    ]


TRAININGRUN = Kind(
    kind="TrainingRun",
    plural="trainingruns",
    base_spec={"model": "yolo26n.yaml", "storage": {"claimName": "azaion-data"}, "resources": {"gpus": 0}},
    invalid=[
        Case({"metadata.name": "r" * 64}, "metadata.name", model=False),
        Case({"spec.model": DELETE, "spec.fromRun": NAME}, "spec.fromRun", model=False, label="fromRun=own name"),
        *bad("spec.model", "/data/models/base.pt", "../base.pt", "runs/../../etc/x.pt", "model.txt", "yolo26n", ""),
        *bad("spec.model", "m" * 1030 + ".pt"),
        Case({"spec.fromRun": "older"}, "spec.model", label="both model and fromRun"),
        Case({"spec.model": DELETE}, "spec.model", label="neither model nor fromRun"),
        *[Case({"spec.model": DELETE, "spec.fromRun": v}, "spec.fromRun") for v in ("Older", "r_1", "-r", "r" * 64)],
        *bad("spec.dataset.split", {"train": 50, "valid": 20, "test": 10}, {"train": 90, "valid": 20, "test": 0}),
        *bad("spec.dataset.split.train", 0, 101),
        *bad("spec.dataset.split.valid", 100, -1),
        *bad("spec.dataset.seed", -1),
        *bad("spec.dataset.source", "all"),
        *bad("spec.dataset.classesFile", "/etc/classes.json", "../classes.json", "cfg/../../classes.json", ""),
        *bad("spec.training.epochs", 0, 10001, "ten"),
        *bad("spec.training.batch", 0, 5000),
        *bad("spec.training.imgsz", 31, 100, 8224),
        *bad("spec.training.savePeriod", 0),
        *bad("spec.training.checkpointIntervalMinutes", -1, 1441, 2.5),
        *bad("spec.queueName", "Team_A", "", "-gpus"),
        *bad("spec.training.workers", -1, 65),
        *bad("spec.training.patience", -1),
        *bad("spec.training.optimizer", "Magic"),
        *bad("spec.training.extraArgs", {"epochs": 5}, {"project": "/etc"}),
        *bad("spec.training.extraArgs.lr0", "high", named="spec.training.extraArgs"),
        *bad("spec.resources.gpus", -1, 17),
        *quantities("spec.resources.cpu"),
        *bad("spec.resources.memory", "-1Gi", "0", "512MB", "Mi"),
        *bad("spec.resources.shmSize", "0", "-8Gi", "lots"),
        *label_maps("spec.resources.nodeSelector"),
        *tolerations("spec.resources.tolerations"),
        *bad("spec.resources.tolerations", [{"operator": "Exists"}] * 65),
        *bad("spec.resources.runtimeClassName", "NVIDIA", "nv_idia", "", "-nvidia"),
        *bad("spec.resources.priorityClassName", "High", "batch_low", ""),
        *bad("spec.storage.claimName", "Data", "data_vol", "", "d" * 254),
        *bad("spec.storage", DELETE),
        *bad("spec.export.onnx.imgsz", 33, 16),
        *bad("spec.export.onnx.batch", 0, 257),
        *bad("spec.export.onnx.opset", 6, 31),
        *bad("spec.export.onnx.parity.tolerance", -0.01, 1.5, "lots"),
        *bad("spec.export.onnx.parity.maxImages", 0, 2.5),
        Case({"spec.export.tensorrt.enabled": True}, "spec.export.tensorrt.enabled", label="tensorrt without a GPU"),
        Case({"spec.publish.s3": S3}, "spec.publish.encryptionKeySecretRef", label="s3 without an encryption key"),
        *_s3(
            "bucket",
            "ab",
            "b" * 64,
            "My-Bucket",
            "bucket_name",
            "-bucket",
            "bucket-",
            "my..bucket",
            "192.168.1.10",
            "buck et",
        ),
        *_s3(
            "endpoint",
            "minio:9000",
            "ftp://minio",
            "http://",
            "https://user:secret@minio",
            "http://minio:port",
            "http:/minio",
            "not a url",
        ),
        *_s3("prefix", "a//b", "../x", "a/./b", "a/.."),
        *_s3("credentialsSecretRef.name", "Bad_Name", ""),
        *_s3("credentialsSecretRef", DELETE),
        *_s3("credentialsSecretRef.accessKeyIdKey", "", "bad key", ".."),
        *_s3("credentialsSecretRef.secretAccessKeyKey", "", "a/b", "..hidden"),
        *[
            Case({"spec.publish.encryptionKeySecretRef": {"name": "model-key", "key": key}}, f"{REF}.key")
            for key in ("", "..key", "a b", ".")
        ],
        Case({"spec.publish.encryptionKeySecretRef": {"name": "Model_Key", "key": "k"}}, f"{REF}.name"),
        Case({"spec.publish.encryptionKeySecretRef": {"name": "model-key"}}, f"{REF}.key"),
        *bad("spec.failurePolicy.maxFailures", 0, 101),
        *bad("spec.failurePolicy.maxPreemptions", -1),
        *bad(EXIT_CODES, [256], [-1], [0], named=f"{EXIT_CODES}[0]"),
        *bad(EXIT_CODES, [78, 300], named=f"{EXIT_CODES}[1]"),
        *bad("spec.failurePolicy.permanentExitCodes", list(range(1, 34))),
        *bad("spec.failurePolicy.backoffSeconds", -1, 3601),
        *bad("spec.activeDeadlineSeconds", 0),
        *bad("spec.ttlSecondsAfterFinished", -1),
        *bad("spec.priority", 1001, -1001),
        *bad("spec.livenessTimeoutSeconds", 59),
        *bad("spec.terminationGracePeriodSeconds", 29, 86401),
        *bad("spec.image", "", " registry/training:1", "registry/training:1 ", "Registry/Training:1"),
        *bad("spec.image", "training:tag with space", "training@sha256:xyz", "training::1", "training:-1"),
        *label_maps("spec.podLabels"),
        *bad("spec.podLabels", {"job-name": "x"}, {"batch.kubernetes.io/controller-uid": "x"}),
        *bad("spec.podLabels", {"ai.azaion.com/trainingrun": "other"}),
        *bad("spec.podAnnotations", {"bad key": "x"}, {"": "x"}, {"a/b/c": "x"}, {("p" * 254) + "/k": "x"}),
        *bad("spec.podAnnotations", {"a": "x" * 262144}, {f"k{i}": "v" for i in range(65)}),
        *bad("spec.bogus", True),
    ],
    valid=[
        Case({}),
        Case({"spec.model": DELETE, "spec.fromRun": "older.run-1"}),
        *good("spec.model", "models/base.pt", "yolo26m.yaml", "weights/v1/best.pt", "cfg/yolo.yml"),
        *good("spec.dataset.classesFile", "config/classes.json", "./classes.json"),
        *good("spec.export.onnx.parity.tolerance", 0, 1, 0.05),
        *good("spec.export.onnx.parity", {"enabled": False}, {"maxImages": 1}),
        *good("spec.training.checkpointIntervalMinutes", 0, 1440),
        *good("spec.queueName", "gpus", "team-a.gpus"),
        Case(
            {
                "spec.resources": {
                    "gpus": 1,
                    "cpu": "500m",
                    "memory": "48Gi",
                    "shmSize": "1.5G",
                    "nodeSelector": {"kubernetes.io/hostname": "azaion-gpu-0", "example.com/zone": ""},
                    "tolerations": [
                        {"operator": "Exists"},
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 30},
                        {"key": "dedicated", "value": "training"},
                    ],
                    "runtimeClassName": "nvidia",
                    "priorityClassName": "batch.low",
                },
                "spec.export.tensorrt.enabled": True,
            },
            label="full resources and tensorrt on a GPU",
        ),
        *good("spec.resources.cpu", "8", "0.5", "1e3", "+2", ".5"),
        *good("spec.resources.memory", "512Mi", "1e9", "2G"),
        Case(
            {
                "spec.publish": {
                    "s3": {
                        "endpoint": "http://minio.azaion.svc:9000",
                        "bucket": "my.bucket-1",
                        "prefix": "models/prod/",
                        "region": "eu-central-1",
                        "credentialsSecretRef": {
                            "name": "s3-credentials",
                            "accessKeyIdKey": "access-key.id",
                            "secretAccessKeyKey": "SECRET_KEY",
                        },
                    },
                    "encryptionKeySecretRef": {"name": "model-key", "key": ".key"},
                    "promote": True,
                }
            },
            label="publish to S3",
        ),
        *[
            Case({"spec.publish.s3": S3, **WITH_KEY, "spec.publish.s3.endpoint": e})
            for e in ("https://s3.eu-central-1.amazonaws.com", "http://10.0.0.5:9000/", "http://[::1]:9000")
        ],
        *[Case({"spec.publish.s3": S3, **WITH_KEY, "spec.publish.s3.prefix": p}) for p in ("/models", "", "a/b.c")],
        *[Case({"spec.publish.s3": S3, **WITH_KEY, "spec.publish.s3.bucket": b}) for b in ("abc", "b" * 63)],
        *good("spec.failurePolicy.permanentExitCodes", [1, 78, 255], []),
        *good("spec.podLabels", {"team": "cv", "example.com/owner": "", "batch.example.com/x": "y"}),
        *good("spec.podAnnotations", {"example.com/note": "free text, with spaces", "Example.com/Mixed": "x"}),
        *good(
            "spec.image",
            "localhost:5000/azaion/training:dev",
            f"ghcr.io/azaion/training:v1.0@{DIGEST}",
            "training",
            "registry.local/azaion/training_gpu:1.2.3-rc.1",
        ),
        Case({"metadata.name": "r" * 63}),
    ],
)


# --- AnnotationConsumer -----------------------------------------------------------

ANNOTATIONCONSUMER = Kind(
    kind="AnnotationConsumer",
    plural="annotationconsumers",
    base_spec={
        "rabbitmq": {"host": "rabbitmq.azaion.svc", "credentialsSecretRef": {"name": "rabbitmq"}},
        "dataVolume": {"claimName": "azaion-data"},
    },
    invalid=[
        Case({"metadata.name": "c" * 64}, "metadata.name", model=False),
        *bad("spec.image", "", "Bad:img", " queue:1", "queue:1 ", "queue@sha256:1"),
        *bad(
            "spec.rabbitmq.host",
            "amqp://rabbitmq",
            "rabbitmq-stream://rabbitmq:5552",
            "rabbitmq:5552",
            "user:secret@rabbitmq",
            "user@rabbitmq",
            "rabbit mq",
            "-rabbit",
            "rabbit-",
            "rabbitmq/vhost",
            "rabbitmq..svc",
            "",
            "h" * 64 + ".svc",
            "fe80::1%eth0",
            "[::1]",
        ),
        *bad("spec.rabbitmq.port", 0, 65536, "5552a"),
        *bad("spec.rabbitmq.vhost", ""),
        *bad("spec.rabbitmq.stream", "", "s" * 256),
        *bad("spec.rabbitmq.credentialsSecretRef.name", "Bad", ""),
        *bad("spec.rabbitmq.credentialsSecretRef", DELETE),
        *bad("spec.rabbitmq.credentialsSecretRef.usernameKey", "", "a b", "..", "."),
        *bad("spec.rabbitmq.credentialsSecretRef.passwordKey", "", "a/b", "..pw"),
        *bad("spec.rabbitmq.password", "secret"),
        *bad("spec.rabbitmq", DELETE),
        *bad("spec.rabbitmq.host", DELETE),
        Case(
            {"spec.rabbitmq.tls": {"enabled": False, "caSecretRef": {"name": "ca", "key": "ca.crt"}}},
            "spec.rabbitmq.tls.caSecretRef",
            label="a CA with TLS off",
        ),
        *[
            Case({"spec.rabbitmq.tls": {"enabled": True, "caSecretRef": ref}}, f"spec.rabbitmq.tls.caSecretRef.{f}")
            for ref, f in (
                ({"name": "ca", "key": ""}, "key"),
                ({"name": "ca", "key": "ca crt"}, "key"),
                ({"name": "Root_CA", "key": "ca.crt"}, "name"),
                ({"name": "ca"}, "key"),
            )
        ],
        # pydantic's lax mode reads "yes" as true; the operator only ever sees what the API server admitted.
        *bad("spec.rabbitmq.tls.enabled", "yes", model=False),
        *bad("spec.dataVolume.claimName", "Data", "", "a_b", "d" * 254),
        *bad("spec.dataVolume", DELETE),
        *quantities("spec.offsetVolume.size"),
        *bad("spec.offsetVolume.size", "0Gi", "-0.5Gi"),
        *bad("spec.offsetVolume.storageClassName", "Fast_SSD", "", "UPPER", "-x", "x." * 127),
        *bad("spec.offsetVolume.deletePolicy", "Keep"),
        *bad("spec.resources.cpu", "-1", "0", "x", "1 core", "0m"),
        *bad("spec.resources.memory", "-512Mi", "0Mi", "512MB", "lots"),
        *label_maps("spec.resources.nodeSelector"),
        *tolerations("spec.resources.tolerations"),
        *bad(
            "spec.startFrom",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T25:00:00Z",
            "2024-01-01T10:61:00Z",
            "2024-01-01T10:00:00",
            "2024-01-01",
            "2024-01-01T10:00:00+25:00",
            "2024-01-01T10:00:00+0200",
            "2024-01-01 10:00:00Z",
            "0000-01-01T00:00:00Z",
            "yesterday",
            "FIRST",
            "",
        ),
        *bad("spec.offsetCommit.everyMessages", 0, 100001),
        *bad("spec.offsetCommit.intervalMilliseconds", 9, 600001),
        *bad("spec.disk.warnPercent", 95, 96, 0, 101),
        Case({"spec.disk": {"warnPercent": 50, "criticalPercent": 40}}, "spec.disk.warnPercent"),
        Case({"spec.disk": {"warnPercent": 50, "criticalPercent": 50}}, "spec.disk.warnPercent"),
        *bad("spec.disk.criticalPercent", 101, 0),
        *bad("spec.stallAfter", "0s", "0m0s", "30", "30min", "1d", "-5m", "", "1.5h", "99999999999h"),
        *bad("spec.replicas", 2),
        *bad("spec.rabbitmq.bogus", True),
    ],
    valid=[
        Case({}),
        *good("spec.image", "registry.local:5000/azaion/queue:1.2.3", f"ghcr.io/azaion/annotation-queue@{DIGEST}"),
        *good("spec.rabbitmq.host", "10.0.0.5", "::1", "2001:db8::5", "RabbitMQ.Azaion.svc.cluster.local", "rmq"),
        Case(
            {
                "spec.rabbitmq": {
                    "host": "rabbitmq.azaion.svc",
                    "port": 5551,
                    "vhost": "azaion",
                    "stream": "annotations.v2",
                    "credentialsSecretRef": {"name": "rabbitmq", "usernameKey": "user.name", "passwordKey": "pass_1"},
                    "tls": {"enabled": True, "caSecretRef": {"name": "rabbitmq-ca", "key": "ca.crt"}},
                }
            },
            label="TLS with a private CA",
        ),
        *good("spec.startFrom", "last", "next", "2024-02-29T00:00:00Z", "2026-01-31T12:00:00.123+02:00"),
        *good("spec.startFrom", "2025-12-31T23:59:59.999999999-05:30"),
        *good("spec.offsetVolume.size", "500Mi", "1.5Gi", "1e9", "1"),
        *good("spec.offsetVolume.storageClassName", "local", "fast.ssd-1"),
        Case(
            {
                "spec.resources": {
                    "cpu": "250m",
                    "memory": "256Mi",
                    "nodeSelector": {"kubernetes.io/hostname": "azaion-gpu-0", "example.com/zone": ""},
                    "tolerations": [
                        {"operator": "Exists"},
                        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "tolerationSeconds": 30},
                        {"key": "dedicated", "operator": "Equal", "value": "queue", "effect": "NoSchedule"},
                    ],
                }
            },
            label="resources and placement",
        ),
        Case({"spec.disk": {"warnPercent": 94, "criticalPercent": 95}}),
        *good("spec.stallAfter", "1h30m", "45s", "2h"),
        Case({"metadata.name": "c" * 63}),
    ],
)

KINDS = [TRAININGRUN, ANNOTATIONCONSUMER]
