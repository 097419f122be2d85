"""helm upgrade and helm rollback with real pods: what rolls, and what must not.

The release's consumer image changes to a rebuilt one (another digest): the
AnnotationConsumer's Deployment rolls to it on upgrade and back on rollback,
while a TrainingRun that was training before the upgrade keeps its pod and
finishes in its first attempt.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from azaion_devtools.broker import LocalRabbitMQ, create_stream
from azaion_devtools.processes import wait_until
from tests.pods.conftest import Images, Release
from tests.pods.pods import (
    CONSUMER_LABEL,
    consumer_pods,
    running_trainer,
    seed_annotations,
    start_consumer,
    trainer_pods,
    wait_for_run,
)
from tests.pods.test_training_pods import start_run, training_run

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]


def consumer_deployment(api_client: Any, namespace: str, name: str) -> client.V1Deployment | None:
    found = (
        client.AppsV1Api(api_client)
        .list_namespaced_deployment(namespace, label_selector=f"{CONSUMER_LABEL}={name}")
        .items
    )
    return found[0] if found else None


def rolled_to(api_client: Any, namespace: str, name: str, image: str) -> bool:
    """The Deployment asks for ``image`` and a ready pod of it runs, no other pod left."""
    deployment = consumer_deployment(api_client, namespace, name)
    if deployment is None or deployment.spec.template.spec.containers[0].image != image:
        return False
    pods = consumer_pods(api_client, namespace, name)
    return len(pods) == 1 and all(
        pod.spec.containers[0].image == image
        and (pod.status.container_statuses or [None])[0] is not None
        and pod.status.container_statuses[0].ready
        for pod in pods
    )


def image_id(api_client: Any, namespace: str, name: str) -> str:
    (pod,) = consumer_pods(api_client, namespace, name)
    return pod.status.container_statuses[0].image_id


def test_upgrade_rolls_the_consumer_rollback_restores_it_and_a_training_pod_survives_both(
    api_client,
    release: Release,
    namespace: str,
    data_claim: str,
    images: Images,
    rebuilt_queue_image: str,
    pod_rabbitmq: LocalRabbitMQ,
    cluster,
) -> None:
    stream = f"upgrade-{namespace[-6:]}"
    asyncio.run(create_stream(pod_rabbitmq.endpoint, stream))
    start_consumer(api_client, namespace, pod_rabbitmq.endpoint, stream, data_claim, "annotations")
    wait_until(lambda: rolled_to(api_client, namespace, "annotations", images.ref("queue")), 180, "the consumer")
    original_digest = image_id(api_client, namespace, "annotations")

    seed_annotations(cluster, namespace, images)
    start_run(api_client, namespace, training_run("across", 8, None, None))
    trainer = running_trainer(api_client, namespace, "across")
    before = release.revision()

    release.upgrade("--set-string", f"queueImage.tag={rebuilt_queue_image.rsplit(':', 1)[1]}")
    wait_until(lambda: rolled_to(api_client, namespace, "annotations", rebuilt_queue_image), 180, "the rebuilt image")
    rebuilt_digest = image_id(api_client, namespace, "annotations")
    assert rebuilt_digest != original_digest, "the rebuilt image is another image"
    assert trainer_pods(api_client, namespace, "across")[-1].metadata.uid == trainer.metadata.uid

    release.helm("rollback", release.name, str(before), "-n", release.namespace, "--wait", "--timeout", "5m")
    wait_until(lambda: rolled_to(api_client, namespace, "annotations", images.ref("queue")), 180, "the old image")
    assert image_id(api_client, namespace, "annotations") == original_digest

    status = wait_for_run(api_client, namespace, "across", lambda s: s.get("phase") == "Succeeded", 900, "success")
    assert status["attempts"] == 1 and not status.get("failures") and not status.get("preemptions"), status
    pods = trainer_pods(api_client, namespace, "across")
    assert [pod.metadata.uid for pod in pods] == [trainer.metadata.uid], "one pod trained across both"
    print(
        f"consumer {original_digest} -> {rebuilt_digest} -> back; trainer pod {trainer.metadata.uid}, "
        f"attempts {status['attempts']}, release revisions {before} -> {release.revision()}"
    )
