"""Helpers of the end-to-end tests: custom resources, pods and what ran in them."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from kubernetes import client

from azaion_devtools.cluster import Cluster
from azaion_devtools.processes import wait_until
from azaion_devtools.synthetic import synthetic_script
from tests.pods.conftest import PLACEMENT, Images

GROUP, VERSION = "ai.azaion.com", "v1alpha1"
TRAINER_CONTAINER = "trainer"
RUN_LABEL = "ai.azaion.com/trainingrun"
CONSUMER_LABEL = "ai.azaion.com/annotationconsumer"


def restricted_pod_spec(image: str, command: list[str], claim: str | None = "azaion-data") -> dict[str, Any]:
    """A pod spec the restricted profile admits, on the node that runs containers."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        **PLACEMENT,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "data", "mountPath": "/azaion"}] if claim else [],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}] if claim else [],
    }
    return spec


def run_pod_to_completion(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], timeout: int = 300) -> str:
    """Run a one-off pod; return its log; fail with the log when it does not succeed."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    phase = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    log = cluster.kubectl("logs", name, "-n", namespace, check=False).stdout
    assert phase == "Succeeded", f"pod {name} ended {phase or 'nowhere'}:\n{log[-3000:]}"
    return log


def seed_annotations(cluster: Cluster, namespace: str, images: Images, count: int = 40) -> None:
    """Draw synthetic annotations onto the data volume, from a pod of the training image (Pillow is there)."""
    # The generator is not part of the image: its source (stdlib and Pillow only) travels in the command.
    script = synthetic_script(f"print(len(write_annotations(Path('/azaion/data'), {count}, seed=1)), 'annotations')")
    log = run_pod_to_completion(
        cluster, namespace, "seed-annotations", restricted_pod_spec(images.ref("training"), ["python", "-c", script])
    )
    assert f"{count} annotations" in log


def custom(api_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def get_run(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    return custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name)


def run_status(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_run(api_client, namespace, name).get("status") or {}


def patch_run_spec(api_client: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    custom(api_client).patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", name, {"spec": spec})


def wait_for_run(api_client: Any, namespace: str, name: str, check, timeout: float, what: str) -> dict[str, Any]:
    """Wait until ``check(status)`` holds; on timeout, say what the status was."""
    seen: dict[str, Any] = {}

    def holds() -> bool:
        seen.clear()
        seen.update(run_status(api_client, namespace, name))
        if seen.get("phase") == "Failed" and "Failed" not in what:
            raise AssertionError(f"the run failed: {json.dumps(seen, indent=1)[-3000:]}")
        return bool(check(seen))

    try:
        wait_until(holds, timeout, what, interval=1)
    except TimeoutError as error:
        raise AssertionError(f"{error}; status: {json.dumps(seen, indent=1)[-3000:]}") from error
    return dict(seen)


def trainer_pods(api_client: Any, namespace: str, run: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=f"{RUN_LABEL}={run}").items
    return sorted(pods, key=lambda pod: pod.metadata.creation_timestamp)


def running_trainer(api_client: Any, namespace: str, run: str) -> client.V1Pod:
    """The trainer pod whose container runs now."""
    found: list[client.V1Pod] = []

    def running() -> bool:
        found[:] = [
            pod
            for pod in trainer_pods(api_client, namespace, run)
            if pod.status.phase == "Running"
            and pod.metadata.deletion_timestamp is None
            and any(s.state.running for s in pod.status.container_statuses or [])
        ]
        return bool(found)

    wait_until(running, 180, f"a running trainer pod of {run}", interval=1)
    return found[-1]


def pod_log(cluster: Cluster, namespace: str, pod: str) -> str:
    return cluster.kubectl("logs", pod, "-n", namespace, "-c", TRAINER_CONTAINER, check=False).stdout


def kill_container(cluster: Cluster, pod: client.V1Pod, container: str = TRAINER_CONTAINER) -> None:
    """SIGKILL a container's process from the node, as the OOM killer or a crash would."""
    (status,) = [s for s in pod.status.container_statuses if s.name == container]
    container_id = status.container_id.split("://", 1)[1]
    if cluster.bin_dir is not None:
        from azaion_devtools.cluster import local_cluster_env

        socket = local_cluster_env()["AZAION_CONTAINERD_SOCK"]
        argv = ["ctr", "-a", socket, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", container_id]
    else:  # kind: the node is a container of the same name
        argv = ["docker", "exec", pod.spec.node_name, "ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL"]
        argv.append(container_id)
    subprocess.run(argv, check=True, capture_output=True, text=True)


def evict(api_client: Any, namespace: str, pod: str) -> None:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod, namespace=namespace))
    client.CoreV1Api(api_client).create_namespaced_pod_eviction(pod, namespace, body)


def consumer_pods(api_client: Any, namespace: str, name: str) -> list[client.V1Pod]:
    """The pods of an AnnotationConsumer's Deployment, whatever their state."""
    return client.CoreV1Api(api_client).list_namespaced_pod(namespace, label_selector=f"{CONSUMER_LABEL}={name}").items


def start_consumer(api_client: Any, namespace: str, endpoint: Any, stream: str, claim: str, name: str) -> None:
    """An AnnotationConsumer of ``stream`` (which must exist), its credentials in a Secret, on the real node."""
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"{name}-rabbitmq"),
            string_data={"username": endpoint.user, "password": endpoint.password},
        ),
    )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AnnotationConsumer",
        "metadata": {"name": name},
        "spec": {
            "rabbitmq": {
                "host": endpoint.host,
                "port": endpoint.port,
                "stream": stream,
                "credentialsSecretRef": {"name": f"{name}-rabbitmq"},
            },
            "dataVolume": {"claimName": claim},
            "offsetCommit": {"everyMessages": 10, "intervalMilliseconds": 200},
            "resources": PLACEMENT,
        },
    }
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "annotationconsumers", body)
