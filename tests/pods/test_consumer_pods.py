"""An AnnotationConsumer on a real pod: the queue image reads the original wire format from RabbitMQ.

The broker runs on this machine, bound where pods reach it; messages come from
the tests' encoder of the .NET producer's format. What lands on the data volume
is read back through the consumer pod itself, so the check holds on kind too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest
from kubernetes import client

from azaion_devtools.broker import LocalRabbitMQ, consume_raw, create_stream, publish
from azaion_devtools.cluster import Cluster
from azaion_devtools.processes import wait_until
from tests.fixtures.scenarios import Step, build_scenario, expected_tree
from tests.pods.conftest import Images
from tests.pods.pods import GROUP, VERSION, consumer_pods, custom, start_consumer

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator")]

TREE_DIGEST = """
import hashlib, json, pathlib
root = pathlib.Path('/azaion')
print(json.dumps({
    p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(root.rglob('*'))
    if p.is_file() and not (p.parent.name == 'quarantine' and p.suffix == '.json')
}))
"""


def consumer_pod(api_client: Any, namespace: str, name: str) -> client.V1Pod | None:
    pods = consumer_pods(api_client, namespace, name)
    live = [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
    return live[0] if live else None


def pod_ready(pod: client.V1Pod | None) -> bool:
    return bool(pod and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []))


def consumer_status(api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    body = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "annotationconsumers", name)
    return body.get("status") or {}


def publish_and_locate(broker: LocalRabbitMQ, stream: str, steps: list[Step], total: int) -> list[int]:
    """Publish ``steps``; return the stream offsets of all ``total`` messages so far."""
    asyncio.run(publish(broker.endpoint, stream, [step.wire for step in steps]))
    return [offset for offset, _ in asyncio.run(consume_raw(broker.endpoint, stream, total))]


def test_a_consumer_pod_ingests_rides_out_a_broker_outage_and_resumes_after_deletion(
    cluster: Cluster, api_client, namespace: str, data_claim: str, images: Images, pod_rabbitmq: LocalRabbitMQ
) -> None:
    endpoint = pod_rabbitmq.endpoint
    stream = f"e2e-{namespace[-6:]}"
    asyncio.run(create_stream(endpoint, stream))
    start_consumer(api_client, namespace, endpoint, stream, data_claim, "annotations")
    steps = build_scenario(seed=11, count=60, malformed_every=15)

    def wait_offset(offset: int, what: str) -> None:
        wait_until(lambda: consumer_status(api_client, namespace, "annotations").get("offset") == offset, 180, what)

    wait_until(lambda: pod_ready(consumer_pod(api_client, namespace, "annotations")), 180, "a ready consumer pod")
    first_pod = consumer_pod(api_client, namespace, "annotations")
    assert first_pod.spec.containers[0].image == images.ref("queue")
    offsets = publish_and_locate(pod_rabbitmq, stream, steps[:30], 30)
    wait_offset(offsets[-1], "the first 30 messages to be durable")

    # The broker goes away: the readiness probe takes the pod out, and back in after.
    pod_rabbitmq.stop()
    wait_until(lambda: not pod_ready(consumer_pod(api_client, namespace, "annotations")), 120, "not ready")
    pod_rabbitmq.start()
    wait_until(lambda: pod_ready(consumer_pod(api_client, namespace, "annotations")), 180, "ready again")
    offsets = publish_and_locate(pod_rabbitmq, stream, steps[30:45], 45)
    wait_offset(offsets[-1], "the messages sent after the outage")

    # The pod is deleted: its successor resumes from the offset volume.
    client.CoreV1Api(api_client).delete_namespaced_pod(first_pod.metadata.name, namespace)

    def successor() -> bool:
        pod = consumer_pod(api_client, namespace, "annotations")
        return pod_ready(pod) and pod.metadata.uid != first_pod.metadata.uid

    wait_until(successor, 180, "a new ready consumer pod")
    second_pod = consumer_pod(api_client, namespace, "annotations")
    offsets = publish_and_locate(pod_rabbitmq, stream, steps[45:], len(steps))
    wait_offset(offsets[-1], "every message")

    log = cluster.kubectl("logs", second_pod.metadata.name, "-n", namespace, check=False).stdout
    assert "stored offset found" in log, log[-2000:]
    digests = json.loads(
        cluster.kubectl(
            "exec", second_pod.metadata.name, "-n", namespace, "--", "python", "-c", TREE_DIGEST
        ).stdout.strip()
    )
    expected = {path: hashlib.sha256(data).hexdigest() for path, data in expected_tree(steps, offsets).items()}
    assert digests == expected
    status = consumer_status(api_client, namespace, "annotations")
    malformed = sum(1 for step in steps if step.op == "malformed")
    assert status["messagesQuarantined"] == malformed, status
    assert status["messagesProcessed"] == len(steps), f"every message counted once across two pods: {status}"
    print(f"consumer pods {first_pod.metadata.uid} -> {second_pod.metadata.uid}; offset {status['offset']}")
