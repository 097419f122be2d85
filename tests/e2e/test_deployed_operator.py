"""End to end: resources in, children out, through whatever operator runs.

On kind (``hack/kind-e2e.sh``) these run with ``--kubeconfig`` and
``--external-operator`` against the operator the chart installed in the
cluster, with its real ServiceAccount and RBAC; on the local control plane
they use the session's operator subprocess.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from azaion_devtools.processes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator", "data_claim")]

GROUP, VERSION = "ai.azaion.com", "v1alpha1"


def custom(api_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def jobs_of(api_client, namespace: str, run: str) -> list[client.V1Job]:
    batch = client.BatchV1Api(api_client)
    return batch.list_namespaced_job(namespace, label_selector=f"ai.azaion.com/trainingrun={run}").items


def status_of(api_client, plural: str, namespace: str, name: str) -> dict[str, Any]:
    return custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name).get("status") or {}


def test_a_training_run_becomes_a_job_and_its_deletion_removes_it(cluster, api_client, namespace):
    # On kind the node has one fake GPU and RuntimeClass nvidia runs runc; on the
    # local control plane other tests share the GPU, so the run asks for none.
    gpus = 0 if cluster.simulated else 1
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": "e2e"},
        "spec": {
            "model": "yolo26n.yaml",
            "storage": {"claimName": "azaion-data"},
            "training": {"epochs": 1, "imgsz": 64},
            "resources": {"gpus": gpus},
            "podAnnotations": {"azaion.local/hold": "true"},
        },
    }
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", body)
    wait_until(lambda: jobs_of(api_client, namespace, "e2e"), 60, "the training Job")
    (job,) = jobs_of(api_client, namespace, "e2e")
    pod_spec = job.spec.template.spec
    (trainer,) = pod_spec.containers
    status = status_of(api_client, "trainingruns", namespace, "e2e")
    assert trainer.image == status["image"], "the run records the image its attempts use"
    assert pod_spec.security_context.run_as_non_root is True
    assert trainer.security_context.allow_privilege_escalation is False
    if gpus:
        assert trainer.resources.limits["nvidia.com/gpu"] == "1"
        assert pod_spec.runtime_class_name == "nvidia"
    core = client.CoreV1Api(api_client)
    wait_until(
        lambda: any(e.involved_object.name == "e2e" for e in core.list_namespaced_event(namespace).items),
        30,
        "an Event on the run's transition",
    )

    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, "trainingruns", "e2e")
    wait_until(lambda: not jobs_of(api_client, namespace, "e2e"), 60, "the Job to go with its run")


def test_an_annotation_consumer_becomes_one_recreate_deployment(api_client, namespace):
    try:
        from azaion_operator.annotationconsumer.builders import deployment_name, offset_claim_name
    except ImportError as error:
        pytest.skip(f"the AnnotationConsumer operator is not there yet ({error})")
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="rabbitmq"), string_data={"username": "u", "password": "e2e-secret"}
        ),
    )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AnnotationConsumer",
        "metadata": {"name": "e2e"},
        "spec": {
            "rabbitmq": {"host": "rabbitmq.invalid", "credentialsSecretRef": {"name": "rabbitmq"}},
            "dataVolume": {"claimName": "azaion-data"},
        },
    }
    custom(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, "annotationconsumers", body)

    def deployment() -> client.V1Deployment | None:
        try:
            return apps.read_namespaced_deployment(deployment_name("e2e"), namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    wait_until(lambda: deployment() is not None, 60, "the consumer Deployment")
    made = deployment()
    assert made.spec.replicas == 1 and made.spec.strategy.type == "Recreate"
    assert "e2e-secret" not in str(api_client.sanitize_for_serialization(made))
    core.read_namespaced_persistent_volume_claim(offset_claim_name("e2e"), namespace)

    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, "annotationconsumers", "e2e")
    wait_until(lambda: deployment() is None, 60, "the Deployment to go with its consumer")
    claim = core.read_namespaced_persistent_volume_claim(offset_claim_name("e2e"), namespace)
    assert claim.metadata.deletion_timestamp is None, "the offset volume is kept"
