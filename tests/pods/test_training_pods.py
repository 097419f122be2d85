"""TrainingRuns on real pods: the training image trains, checkpoints, resumes, publishes.

Each run trains a tiny model on CPU (the node's fake GPU schedules it; RuntimeClass
``nvidia`` is runc), from synthetic annotations a pod draws onto the data volume,
and publishes to an S3 server on this machine that the pod reaches over the pod
network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from azaion_devtools.cluster import Cluster
from tests.fixtures.mlflow import MlflowServer
from tests.fixtures.s3 import S3Server
from tests.pods.conftest import PLACEMENT, Images
from tests.pods.pods import (
    GROUP,
    VERSION,
    custom,
    evict,
    kill_container,
    patch_run_spec,
    pod_log,
    run_status,
    running_trainer,
    seed_annotations,
    trainer_pods,
    wait_for_run,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]

KEY_HEX = "8f" * 32


def training_run(name: str, epochs: int, bucket: str | None, s3: S3Server | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "yolo26n.yaml",
        "storage": {"claimName": "azaion-data"},
        "training": {"epochs": epochs, "imgsz": 64, "batch": 8, "workers": 0},
        "resources": {"gpus": 1, "memory": "3Gi", "shmSize": "256Mi", **PLACEMENT},
        "export": {"onnx": {"imgsz": 64, "batch": 1}},
        "failurePolicy": {"backoffSeconds": 0},
        "terminationGracePeriodSeconds": 60,
    }
    if bucket and s3:
        spec["publish"] = {
            "s3": {
                "endpoint": s3.endpoint,
                "bucket": bucket,
                "prefix": "models/",
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
            "encryptionKeySecretRef": {"name": "model-key", "key": "key"},
        }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}


def create_secrets(api_client: Any, namespace: str, s3: S3Server) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-credentials"),
            string_data={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
        ),
    )
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="model-key"), string_data={"key": KEY_HEX})
    )


@pytest.fixture
def trained_data(cluster: Cluster, namespace: str, data_claim: str, images: Images) -> str:
    seed_annotations(cluster, namespace, images)
    return namespace


def last_exit_code(api_client: Any, namespace: str, pod: str) -> int | None:
    """Watch a pod until its trainer terminates; return the exit code."""
    stream = watch.Watch().stream(
        client.CoreV1Api(api_client).list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={pod}",
        timeout_seconds=150,
    )
    for event in stream:
        for state in event["object"].status.container_statuses or []:
            if state.state.terminated:
                return int(state.state.terminated.exit_code)
    return None


def start_run(api_client: Any, namespace: str, body: dict[str, Any]) -> None:
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)


def epoch_of(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("epoch") or 0)


def test_a_run_trains_in_its_pod_and_publishes_a_model_that_decrypts(
    cluster: Cluster, api_client, trained_data: str, pod_s3: S3Server, pod_mlflow: MlflowServer, tmp_path: Path
) -> None:
    namespace = trained_data
    bucket = pod_s3.new_bucket()
    create_secrets(api_client, namespace, pod_s3)
    # Credentials by reference: a username and password (the server ignores them), no token key.
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mlflow"), string_data={"username": "trainer", "password": "unused"}
        ),
    )
    body = training_run("tiny", 3, bucket, pod_s3)
    body["spec"]["tracking"] = {
        "mlflow": {
            "trackingUri": pod_mlflow.uri,
            "experimentName": f"pods-{namespace}",
            "credentialsSecretRef": {"name": "mlflow"},
        }
    }
    start_run(api_client, namespace, body)

    pod = running_trainer(api_client, namespace, "tiny")
    epochs_seen: set[int] = set()

    def finished(status: dict[str, Any]) -> bool:
        if epoch_of(status):
            epochs_seen.add(epoch_of(status))
        return status.get("phase") == "Succeeded"

    status = wait_for_run(api_client, namespace, "tiny", finished, 900, "the run to succeed")
    assert len(epochs_seen) >= 2, f"kubectl get tr shows the epochs advancing, saw only {sorted(epochs_seen)}"
    assert status["attempts"] == 1 and not status.get("failures")
    pods = trainer_pods(api_client, namespace, "tiny")
    assert [p.metadata.uid for p in pods] == [pod.metadata.uid], "one pod trained the whole run"
    (state,) = pods[0].status.container_statuses
    assert state.state.terminated.exit_code == 0

    artifacts = status["artifacts"]
    manifest_uri = artifacts["manifestUri"]
    assert manifest_uri.startswith(f"s3://{bucket}/models/")
    manifest = json.loads(pod_s3.client().get_object(Bucket=bucket, Key=manifest_uri.split("/", 3)[3])["Body"].read())
    encrypted_uri = next(uri for uri in artifacts["publishedUris"] if uri != manifest_uri)
    encrypted = tmp_path / "model.onnx.enc"
    encrypted.write_bytes(pod_s3.client().get_object(Bucket=bucket, Key=encrypted_uri.split("/", 3)[3])["Body"].read())
    key_file = tmp_path / "key"
    key_file.write_text(KEY_HEX)
    onnx_file = tmp_path / "model.onnx"
    decrypt = Path(sys.executable).parent / "azaion-train"
    subprocess.run([str(decrypt), "decrypt", str(encrypted), str(onnx_file), "--key-file", str(key_file)], check=True)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[-1] == 64
    assert manifest, "the manifest is JSON"

    # MLflow: every epoch, the curves and the export logged; the published model registered.
    def tracking_shown(status: dict[str, Any]) -> bool:
        shown = next((c for c in status.get("conditions") or [] if c["type"] == "Tracking"), {})
        return shown.get("reason") == "Logged" and shown.get("status") == "True"

    status = wait_for_run(api_client, namespace, "tiny", tracking_shown, 60, "the Tracking condition")
    tracked = status["mlflow"]
    assert tracked["state"] == "Logged" and tracked["modelVersion"] == "1"
    mlflow = pod_mlflow.client()
    assert [p.step for p in mlflow.get_metric_history(tracked["runId"], "map50_95")] == [1, 2, 3]
    assert {"results.csv", "results.png", "model"} <= {a.path for a in mlflow.list_artifacts(tracked["runId"])}
    (version,) = mlflow.search_model_versions(f"name='azaion-{namespace}'")
    assert version.source == encrypted_uri
    assert artifacts["resultsPngUri"] in artifacts["publishedUris"]


def test_a_killed_trainer_resumes_from_its_checkpoint_in_a_new_attempt(
    cluster: Cluster, api_client, trained_data: str
) -> None:
    namespace = trained_data
    start_run(api_client, namespace, training_run("killed", 5, None, None))
    first = running_trainer(api_client, namespace, "killed")
    status = wait_for_run(
        api_client,
        namespace,
        "killed",
        lambda s: epoch_of(s) >= 2 and (s.get("lastCheckpoint") or {}).get("epoch"),
        600,
        "two epochs and a checkpoint",
    )
    kill_container(cluster, first)

    status = wait_for_run(api_client, namespace, "killed", lambda s: s.get("phase") == "Succeeded", 900, "success")
    assert status["attempts"] == 2 and status["failures"] == 1, status
    history = status["attemptHistory"]
    assert history[0]["outcome"] == "Failed" and history[0]["exitCode"] == 137, history
    second = trainer_pods(api_client, namespace, "killed")[-1]
    assert second.metadata.uid != first.metadata.uid
    resumed = re.search(r"resuming at epoch (\d+) of 5", pod_log(cluster, namespace, second.metadata.name))
    assert resumed, "the second attempt resumed from a checkpoint"
    assert int(resumed.group(1)) >= 2, "the epochs before the kill are not trained again"
    print(f"killed pod {first.metadata.uid}; attempt 2 pod {second.metadata.uid} resumed at epoch {resumed.group(1)}")


def test_an_evicted_trainer_resumes_mid_epoch_and_counts_as_a_preemption(
    cluster: Cluster, api_client, namespace: str, data_claim: str, images: Images
) -> None:
    # 400 annotations at batch 2: 140 batches per epoch, long enough to be evicted in the middle of one.
    seed_annotations(cluster, namespace, images, count=400)
    body = training_run("evicted", 2, None, None)
    body["spec"]["training"]["batch"] = 2
    body["spec"]["export"]["onnx"]["enabled"] = False
    start_run(api_client, namespace, body)
    first = running_trainer(api_client, namespace, "evicted")
    wait_for_run(
        api_client,
        namespace,
        "evicted",
        lambda s: (s.get("progress") or {}).get("resumedFrom") is not None,
        600,
        "the first batches",
    )
    time.sleep(5)  # into the first epoch
    evict(api_client, namespace, first.metadata.name)

    status = wait_for_run(api_client, namespace, "evicted", lambda s: s.get("phase") == "Succeeded", 900, "success")
    assert status.get("preemptions") == 1, status
    assert not status.get("failures"), "an eviction is never a failure"
    # The Job replaced the evicted pod itself: one attempt, whose second pod resumed.
    (attempt,) = status["attemptHistory"]
    assert status["preemptedPods"] == [first.metadata.name], status
    resumed = attempt["resumedFrom"]
    second = trainer_pods(api_client, namespace, "evicted")[-1]
    assert second.metadata.uid != first.metadata.uid and resumed["pod"] == second.metadata.name, resumed
    assert resumed["epoch"] == 0 and 0 < resumed["batch"] < 140, resumed
    assert resumed["redoneBatches"] == 0, "the evicted pod saved where it stopped"
    log = pod_log(cluster, namespace, second.metadata.name)
    assert f"resuming at batch {resumed['batch']} of 140 of epoch 1" in log
    print(f"evicted pod {first.metadata.uid}; its replacement resumed at batch {resumed['batch']} of epoch 1")


def test_suspend_stops_the_trainer_resumably_and_unsuspend_resumes(
    cluster: Cluster, api_client, trained_data: str
) -> None:
    namespace = trained_data
    start_run(api_client, namespace, training_run("paused", 5, None, None))
    first = running_trainer(api_client, namespace, "paused")
    wait_for_run(api_client, namespace, "paused", lambda s: epoch_of(s) >= 2, 600, "two epochs")
    with ThreadPoolExecutor(1) as pool:
        # Watched from before the suspend: the pod is deleted right after its container exits.
        exit_code = pool.submit(last_exit_code, api_client, namespace, first.metadata.name)
        patch_run_spec(api_client, namespace, "paused", {"suspend": True})
        wait_for_run(api_client, namespace, "paused", lambda s: s.get("phase") == "Suspended", 120, "Suspended")
        assert exit_code.result(timeout=120) == 75, "a suspended trainer exits 75 after its checkpoint"

    patch_run_spec(api_client, namespace, "paused", {"suspend": False})
    status = wait_for_run(api_client, namespace, "paused", lambda s: s.get("phase") == "Succeeded", 900, "success")
    assert not status.get("failures"), status
    second = trainer_pods(api_client, namespace, "paused")[-1]
    assert re.search(r"resuming at epoch \d+ of 5", pod_log(cluster, namespace, second.metadata.name))
    assert run_status(api_client, namespace, "paused")["attempts"] == 2
