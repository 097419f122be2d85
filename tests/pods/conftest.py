"""End-to-end fixtures: the chart installed with the project's own images, pods that really run.

The session installs the chart (``helm upgrade --install``) with the images
built from this checkout into a namespace under the ``restricted`` Pod Security
profile, and every test namespace is restricted too. Pods are placed on the
node that runs containers: on the local control plane that is the real kubelet
node (``hack/cluster.sh up --real-node``, tainted so simulated tests never land
there), on kind the node that ``hack/kind-e2e.sh`` labels the same way.

Servers the pods talk to (S3, RabbitMQ) run on this machine, bound to the
address the pods reach it by (``--host-address``, or the local plane's).

The operator of these tests is the in-cluster one, so ``tests/pods`` runs in a
pytest session of its own: a second, host-side operator would reconcile the
same resources. The suite is collected only with ``AZAION_REAL_PODS=1``
(``hack/test-pods.sh`` sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from azaion_devtools.broker import LocalRabbitMQ, broker_installed, private_broker
from azaion_devtools.cluster import REPO, Cluster, local_cluster_env
from azaion_devtools.processes import ManagedProcess, free_port, port_open, wait_until
from tests.fixtures.mlflow import MlflowServer, start_mlflow
from tests.fixtures.s3 import S3Server

# Pods that must run containers select this label and tolerate its taint.
REAL_NODE_LABEL = "azaion.local/real-node"
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {REAL_NODE_LABEL: "true"},
    "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
RELEASE, RELEASE_NAMESPACE = "azaion", "azaion-system"
IMAGE_NAMES = ("operator", "queue", "training")

# The local plane must start with its real node for these tests.
os.environ.setdefault("AZAION_REAL_NODE", "1")


@dataclass(frozen=True)
class Images:
    registry: str
    tag: str

    def ref(self, name: str, tag: str | None = None) -> str:
        return f"{self.registry}/{name}:{tag or self.tag}"


@dataclass
class Release:
    """The chart installed for the session; tests may upgrade and roll it back."""

    cluster: Cluster
    images: Images
    name: str = RELEASE
    namespace: str = RELEASE_NAMESPACE
    values: list[str] = field(default_factory=list)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.cluster.tool("helm"), *args], env=self.cluster.env(), capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def upgrade(self, *extra: str) -> subprocess.CompletedProcess:
        return self.helm(
            "upgrade", "--install", self.name, str(REPO / "charts" / "azaion"), "-n", self.namespace,
            *self.values, *extra, "--wait", "--timeout", "5m",
        )  # fmt: skip

    def revision(self) -> int:
        history = json.loads(self.helm("history", self.name, "-n", self.namespace, "-o", "json").stdout)
        return int(history[-1]["revision"])


def chart_values(images: Images) -> list[str]:
    values = {
        "image.repository": f"{images.registry}/operator",
        "image.tag": images.tag,
        "image.pullPolicy": "Never",
        "queueImage.repository": f"{images.registry}/queue",
        "queueImage.tag": images.tag,
        "trainingImage.repository": f"{images.registry}/training",
        "trainingImage.tag": images.tag,
        "operator.workloadImagePullPolicy": "Never",
    }
    escaped_label = REAL_NODE_LABEL.replace(".", "\\.")  # helm --set splits keys at dots
    values[f"nodeSelector.{escaped_label}"] = "true"
    args = [arg for key, value in values.items() for arg in ("--set-string", f"{key}={value}")]
    args += ["--set", "operator.reconcileIntervalSeconds=1"]
    toleration = PLACEMENT["tolerations"][0]
    args += ["--set-json", f"tolerations=[{json.dumps(toleration)}]"]
    return args


@pytest.fixture(scope="session")
def images(cluster: Cluster, request: pytest.FixtureRequest) -> Images:
    """The three images of this checkout, where the node's runtime finds them.

    On the local plane they are built (``hack/images.sh``) and loaded into the
    real node's containerd; with ``--kubeconfig`` they must be loaded already
    (``hack/kind-e2e.sh`` does) under ``--image-tag``.
    """
    tag = request.config.getoption("--image-tag") or os.environ.get("AZAION_IMAGE_TAG", "dev")
    built = Images("azaion.local", tag)
    if cluster.bin_dir is None:
        return built
    env = {**os.environ, "AZAION_IMAGE_TAG": tag}
    result = subprocess.run([str(REPO / "hack" / "images.sh"), "build"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"hack/images.sh build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    for name in IMAGE_NAMES:
        load_image(built.ref(name))
    return built


@pytest.fixture(scope="session")
def rebuilt_queue_image(cluster: Cluster, images: Images) -> str:
    """The queue image built again with another revision label: the same layers, another digest.

    With ``--kubeconfig`` it must be loaded already, tagged ``<tag>-rebuilt``
    (``hack/kind-e2e.sh`` does).
    """
    tag = f"{images.tag}-rebuilt"
    if cluster.bin_dir is None:
        return images.ref("queue", tag)
    env = {**os.environ, "AZAION_IMAGE_TAG": tag, "AZAION_IMAGE_REVISION": "rebuilt"}
    result = subprocess.run(
        [str(REPO / "hack" / "images.sh"), "build", "queue"], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"rebuilding the queue image failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    load_image(images.ref("queue", tag))
    return images.ref("queue", tag)


def load_image(ref: str) -> None:
    result = subprocess.run([str(REPO / "hack" / "cluster.sh"), "load-image", ref], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"loading {ref} into the node failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def host_address(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The address of this machine as pods see it."""
    given = request.config.getoption("--host-address")
    if given:
        return given
    if cluster.bin_dir is None:
        pytest.fail("--host-address is needed with --kubeconfig (kind: the docker network's gateway)")
    address = local_cluster_env().get("AZAION_HOST_ADDRESS")
    if not address:
        pytest.fail("the local control plane has no real node (hack/cluster.sh up --real-node)")
    return address


@pytest.fixture(scope="session")
def release(cluster: Cluster, images: Images) -> Iterator[Release]:
    """The chart, installed with this checkout's images under the restricted profile."""
    _restricted_namespace(cluster, RELEASE_NAMESPACE)
    installed = Release(cluster, images, values=chart_values(images))
    installed.upgrade()
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        "crd/trainingruns.ai.azaion.com", "crd/annotationconsumers.ai.azaion.com",
    )  # fmt: skip
    yield installed
    if os.environ.get("AZAION_KEEP_RELEASE") != "1":
        installed.helm("uninstall", installed.name, "-n", installed.namespace, "--wait", check=False)


@pytest.fixture(scope="session")
def operator(release: Release) -> None:
    """The operator of these tests is the chart's, in the cluster: nothing runs on the host."""
    return None


def _restricted_namespace(cluster: Cluster, name: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


@pytest.fixture
def namespace(cluster: Cluster, api_client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test under the restricted profile, deleted afterwards."""
    from tests.fixtures.kube import _wait_for_default_service_account

    base = request.node.name[:28].lower().replace("_", "-")
    name = "".join(ch for ch in f"e2e-{base}-{uuid.uuid4().hex[:6]}" if ch.isalnum() or ch == "-")
    _restricted_namespace(cluster, name)
    from kubernetes import client

    _wait_for_default_service_account(client.CoreV1Api(api_client), name)
    yield name
    if os.environ.get("AZAION_KEEP_NAMESPACES") != "1":
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def data_claim(cluster: Cluster, namespace: str) -> str:
    """A data volume claim from the cluster's default storage class."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "azaion-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))
    return "azaion-data"


@pytest.fixture(scope="session")
def pod_s3(request: pytest.FixtureRequest, host_address: str, tmp_path_factory) -> Iterator[S3Server]:
    """An S3 server (moto) that pods reach over the pod network."""
    endpoint = request.config.getoption("--s3-endpoint")
    if endpoint:
        yield S3Server(endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        return
    port = free_port()
    server = ManagedProcess(
        [sys.executable, "-m", "moto.server", "-H", host_address, "-p", str(port)],
        tmp_path_factory.mktemp("pod-s3") / "moto.log",
    )
    try:
        wait_until(lambda: port_open(port, host_address) or not server.alive(), 60, "the moto S3 server")
        if not server.alive():
            pytest.fail(f"moto exited:\n{server.log_tail()}")
        yield S3Server(f"http://{host_address}:{port}", "testing", "testing", started=True)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pod_mlflow(host_address: str, tmp_path_factory) -> Iterator[MlflowServer]:
    """An MLflow tracking server that pods reach over the pod network."""
    with start_mlflow(host_address, tmp_path_factory.mktemp("pod-mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def pod_rabbitmq(host_address: str) -> Iterator[LocalRabbitMQ]:
    """A private RabbitMQ with streams, listening where pods reach it."""
    if not broker_installed():
        pytest.fail("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    with private_broker("azaion-e2e-rabbitmq-", host=host_address) as broker:
        yield broker
