"""A real API server to talk to, the operator as a subprocess, and resources to create.

Shared by the tests (their fixtures wrap these), the benchmarks and hack/:
:class:`Cluster` says where the API server is and runs kubectl; the local
control plane is ``hack/cluster.sh``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azaion_devtools.processes import ManagedProcess, free_port, wait_until


class MissingTool(FileNotFoundError):
    """A command-line tool the cluster helpers need is not installed."""


REPO = Path(__file__).resolve().parents[2]  # devtools/azaion_devtools/cluster.py
CLUSTER_SCRIPT = REPO / "hack" / "cluster.sh"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class Cluster:
    """What a test needs to talk to the cluster."""

    kubeconfig: Path
    bin_dir: Path | None
    #: True on the local control plane, where kwok plays the kubelet and pod
    #: outcomes are steered by annotations (hack/kwok-stages.yaml).
    simulated: bool

    def tool(self, name: str) -> str:
        if self.bin_dir and (self.bin_dir / name).exists():
            return str(self.bin_dir / name)
        found = shutil.which(name)
        if not found:
            raise MissingTool(f"{name} is not installed (hack/setup.sh installs it)")
        return found

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            text=True,
            capture_output=True,
            check=check,
        )

    def env(self) -> dict[str, str]:
        """Environment for child processes (operator, helm) that use this cluster."""
        path = os.environ.get("PATH", "")
        if self.bin_dir:
            path = f"{self.bin_dir}{os.pathsep}{path}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}


def local_state() -> dict:
    state_dir = Path(os.environ.get("AZAION_CLUSTER_DIR", REPO / ".state" / "cluster"))
    try:
        return json.loads((state_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}


def local_cluster_env() -> dict[str, str]:
    """What ``hack/cluster.sh env`` exports (KUBECONFIG, AZAION_HOST_ADDRESS, ...)."""
    result = subprocess.run([str(CLUSTER_SCRIPT), "env"], capture_output=True, text=True)
    exported = {}
    for line in result.stdout.splitlines():
        key, equals, value = line.removeprefix("export ").partition("=")
        if equals and line.startswith("export "):
            exported[key] = value.strip("'\"")
    return exported


def apply_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in (REPO / "crds").glob("*.yaml"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(crd))


#: The host operator runs on the operator image's packages: the Kubernetes client libraries
#: the dev environment holds for tests cannot be imported (kopf would load them if present).
OPERATOR_ENTRY = (
    "import sys; sys.modules.update(dict.fromkeys(('kubernetes', 'kubernetes_asyncio', 'pykube'))); "
    "from azaion_operator.main import main; main()"
)


def start_operator(cluster: Cluster, log_dir: Path, interval: float = 1.0) -> tuple[ManagedProcess, int]:
    health_port, metrics_port = free_port(), free_port()
    env = {
        **cluster.env(),
        "AZAION_RECONCILE_INTERVAL_SECONDS": str(interval),
        "AZAION_TRAINING_IMAGE": "registry.local/azaion/training:test",
        "AZAION_QUEUE_IMAGE": "registry.local/azaion/annotation-queue:test",
    }
    process = ManagedProcess(
        [
            sys.executable,
            "-c",
            OPERATOR_ENTRY,
            "--metrics-port",
            str(metrics_port),
            "--liveness",
            f"http://127.0.0.1:{health_port}/healthz",
        ],
        log_path=log_dir / f"operator-{health_port}.log",
        env=env,
    )

    def healthy() -> bool:
        if not process.alive():
            raise RuntimeError(f"the operator exited:\n{process.log_tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1) as response:
            return response.status == 200

    wait_until(healthy, 60, "the operator's liveness endpoint")
    return process, metrics_port


GROUP, VERSION = "ai.azaion.com", "v1alpha1"


def custom_resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}


def trainingrun(name: str, **spec: Any) -> dict[str, Any]:
    """A small TrainingRun on the ``azaion-data`` claim; ``spec`` keys override the defaults."""
    defaults = {
        "model": "yolo26n.yaml",
        "storage": {"claimName": "azaion-data"},
        "training": {"epochs": 3, "imgsz": 64},
    }
    return custom_resource("TrainingRun", name, {**defaults, **spec})


def annotationconsumer(name: str, **spec: Any) -> dict[str, Any]:
    """An AnnotationConsumer on the ``azaion-data`` claim, credentials from the ``rabbitmq`` Secret."""
    defaults = {
        "image": "registry.local/azaion/annotation-queue:1.0.0",
        "rabbitmq": {"host": "rabbitmq.azaion.svc", "credentialsSecretRef": {"name": "rabbitmq"}},
        "dataVolume": {"claimName": "azaion-data"},
    }
    return custom_resource("AnnotationConsumer", name, {**defaults, **spec})
