"""The AnnotationConsumer operator, running for real against the control plane."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from azaion_devtools.cluster import annotationconsumer
from azaion_devtools.processes import wait_until
from tests.fixtures.kube import crd_without_bound
from tests.fixtures.resources import assert_rejected_naming, with_spec_changes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator", "data_claim")]

GROUP, VERSION, PLURAL = "ai.azaion.com", "v1alpha1", "annotationconsumers"
SECRET_VALUES = {"username": "azaion_receiver", "password": "never-in-a-spec-0xC0FFEE"}


@pytest.fixture
def rabbitmq_secret(api_client, namespace) -> None:
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="rabbitmq"), string_data=SECRET_VALUES)
    )


def custom(api_client) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def create(api_client, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def status_of(api_client, namespace: str, name: str) -> dict[str, Any]:
    return custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {}


def condition(api_client, namespace: str, name: str, kind: str) -> dict[str, Any]:
    for entry in status_of(api_client, namespace, name).get("conditions") or []:
        if entry["type"] == kind:
            return entry
    return {}


def deployment(api_client, namespace: str, name: str) -> client.V1Deployment | None:
    try:
        return client.AppsV1Api(api_client).read_namespaced_deployment(f"{name}-consumer", namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def report(api_client, namespace: str, name: str, **fields: Any) -> None:
    """Play the consumer's part: it merge-patches its counters into status."""
    fields.setdefault("reportedAt", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    custom(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": fields}
    )


def test_apply_creates_offset_claim_and_deployment_then_runs(api_client, namespace, rabbitmq_secret):
    create(api_client, namespace, annotationconsumer("main"))
    core = client.CoreV1Api(api_client)
    wait_until(lambda: deployment(api_client, namespace, "main") is not None, 15, "the consumer Deployment")
    wait_until(
        lambda: core.read_namespaced_persistent_volume_claim("main-offset", namespace).status.phase == "Bound",
        30,
        "the offset claim to bind",
    )
    found = deployment(api_client, namespace, "main")
    assert found.spec.replicas == 1
    assert found.spec.strategy.type == "Recreate"
    pod = found.spec.template.spec
    (container,) = pod.containers
    assert container.liveness_probe.http_get.path == "/healthz"
    assert container.readiness_probe.http_get.path == "/readyz"
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
    assert claims == {"data": "azaion-data", "offset": "main-offset"}
    env = {e.name: e for e in container.env}
    assert env["RABBITMQ_PASSWORD"].value_from.secret_key_ref.name == "rabbitmq"
    serialized = json.dumps(api_client.sanitize_for_serialization(found))
    for secret in SECRET_VALUES.values():
        assert secret not in serialized
    assert pod.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    assert pod.service_account_name == "main-consumer"

    wait_until(lambda: status_of(api_client, namespace, "main").get("phase") == "Running", 60, "phase Running")
    assert condition(api_client, namespace, "main", "Available")["status"] == "True"


def test_every_status_the_consumer_shows_is_whole(api_client, namespace, rabbitmq_secret):
    """Each status write carries the Reconciled condition, the phase and the health conditions
    together: a watch from creation to Running never sees one without the others."""
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def follow() -> None:
        stream = watch.Watch().stream(
            custom(api_client).list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, timeout_seconds=90
        )
        for event in stream:
            status = event["object"].get("status") or {}
            if status:
                seen.append(status)
            if status.get("phase") == "Running" or done.is_set():
                return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    create(api_client, namespace, annotationconsumer("whole"))
    wait_until(lambda: status_of(api_client, namespace, "whole").get("phase") == "Running", 60, "phase Running")
    done.set()
    follower.join(timeout=95)
    assert seen and seen[-1]["phase"] == "Running"
    for status in seen:
        kinds = {c["type"] for c in status.get("conditions") or []}
        assert status.get("phase") and {"Reconciled", "Available"} <= kinds, status
        assert status.get("deploymentName") == "whole-consumer", status


def test_image_change_rolls_the_deployment_never_two_pods(api_client, namespace, rabbitmq_secret):
    core = client.CoreV1Api(api_client)
    create(api_client, namespace, annotationconsumer("roll"))
    wait_until(lambda: status_of(api_client, namespace, "roll").get("phase") == "Running", 60, "phase Running")

    alive: set[str] = set()
    most = [0]
    stop = threading.Event()

    def track() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            core.list_namespaced_pod,
            namespace,
            label_selector="ai.azaion.com/annotationconsumer=roll",
            timeout_seconds=60,
        ):
            pod = event["object"]
            if event["type"] == "DELETED":
                alive.discard(pod.metadata.name)
            else:
                alive.add(pod.metadata.name)
            most[0] = max(most[0], len(alive))
            if stop.is_set():
                stream.stop()

    watcher = threading.Thread(target=track, daemon=True)
    watcher.start()
    new_image = "registry.local/azaion/annotation-queue:1.1.0"
    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "roll", {"spec": {"image": new_image}}
    )

    def rolled() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector="ai.azaion.com/annotationconsumer=roll").items
        return [p.spec.containers[0].image for p in pods] == [new_image] and pods[0].status.phase == "Running"

    wait_until(rolled, 60, "the new image to run")
    assert deployment(api_client, namespace, "roll").spec.template.spec.containers[0].image == new_image
    stop.set()
    assert most[0] == 1, f"{most[0]} consumer pods existed at once"


def test_delete_keeps_the_offset_claim_and_recreate_reuses_it(api_client, namespace, rabbitmq_secret):
    core = client.CoreV1Api(api_client)
    create(api_client, namespace, annotationconsumer("keeper"))
    wait_until(
        lambda: core.read_namespaced_persistent_volume_claim("keeper-offset", namespace).status.phase == "Bound",
        30,
        "the offset claim",
    )
    claim_uid = core.read_namespaced_persistent_volume_claim("keeper-offset", namespace).metadata.uid
    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keeper")
    wait_until(lambda: deployment(api_client, namespace, "keeper") is None, 30, "the Deployment to be deleted")
    assert core.read_namespaced_persistent_volume_claim("keeper-offset", namespace).metadata.uid == claim_uid

    create(api_client, namespace, annotationconsumer("keeper"))
    wait_until(lambda: deployment(api_client, namespace, "keeper") is not None, 15, "the new Deployment")
    claim = core.read_namespaced_persistent_volume_claim("keeper-offset", namespace)
    assert claim.metadata.uid == claim_uid
    assert claim.metadata.deletion_timestamp is None


def test_delete_policy_delete_removes_the_offset_claim(api_client, namespace, rabbitmq_secret):
    core = client.CoreV1Api(api_client)
    create(api_client, namespace, annotationconsumer("ephemeral", offsetVolume={"deletePolicy": "Delete"}))
    wait_until(
        lambda: (
            core.list_namespaced_persistent_volume_claim(
                namespace, label_selector="ai.azaion.com/annotationconsumer=ephemeral"
            ).items
        ),
        15,
        "the claim",
    )
    custom(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ephemeral")

    def claim_gone() -> bool:
        claims = core.list_namespaced_persistent_volume_claim(
            namespace, label_selector="ai.azaion.com/annotationconsumer=ephemeral"
        ).items
        return all(c.metadata.deletion_timestamp for c in claims)

    wait_until(claim_gone, 30, "the offset claim to be deleted")


def test_stalled_appears_when_the_offset_stops_and_clears_when_it_moves(api_client, namespace, rabbitmq_secret):
    create(api_client, namespace, annotationconsumer("watched", stallAfter="3s"))
    wait_until(lambda: status_of(api_client, namespace, "watched").get("phase") == "Running", 60, "phase Running")
    report(api_client, namespace, "watched", offset=10, messagesWaiting=5, connected=True)

    def stalled() -> bool:
        report(api_client, namespace, "watched", offset=10, messagesWaiting=5, connected=True)
        return condition(api_client, namespace, "watched", "Stalled").get("status") == "True"

    wait_until(stalled, 20, "the Stalled condition")
    assert "offset 10" in condition(api_client, namespace, "watched", "Stalled")["message"]
    assert status_of(api_client, namespace, "watched")["phase"] == "Degraded"

    def stalled_event() -> bool:
        events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        return any(e.reason == "Stalled" and e.involved_object.name == "watched" for e in events)

    wait_until(stalled_event, 10, "a Stalled Event")

    report(api_client, namespace, "watched", offset=42, messagesWaiting=0, connected=True)
    wait_until(
        lambda: condition(api_client, namespace, "watched", "Stalled").get("status") == "False", 20, "Stalled to clear"
    )
    assert status_of(api_client, namespace, "watched")["phase"] == "Running"


def test_disk_pressure_follows_the_consumer_report(api_client, namespace, rabbitmq_secret):
    create(api_client, namespace, annotationconsumer("full"))
    wait_until(lambda: status_of(api_client, namespace, "full").get("phase") == "Running", 60, "phase Running")
    report(api_client, namespace, "full", diskUsagePercent=96.5)
    wait_until(
        lambda: condition(api_client, namespace, "full", "DiskPressure").get("status") == "True", 20, "DiskPressure"
    )
    assert condition(api_client, namespace, "full", "DiskPressure")["reason"] == "DiskCritical"
    report(api_client, namespace, "full", diskUsagePercent=40.0)
    wait_until(
        lambda: condition(api_client, namespace, "full", "DiskPressure").get("status") == "False",
        20,
        "DiskPressure to clear",
    )


INVALID = [
    ("no rabbitmq", {"rabbitmq": None}, "spec.rabbitmq"),
    (
        "inline password",
        {"rabbitmq": {"host": "h", "password": "x", "credentialsSecretRef": {"name": "s"}}},
        "spec.rabbitmq.password",
    ),
    (
        "port out of range",
        {"rabbitmq": {"host": "h", "port": 70000, "credentialsSecretRef": {"name": "s"}}},
        "spec.rabbitmq.port",
    ),
    ("bad delete policy", {"offsetVolume": {"deletePolicy": "Shred"}}, "spec.offsetVolume.deletePolicy"),
    ("bad stallAfter", {"stallAfter": "soon"}, "spec.stallAfter"),
    ("bad startFrom", {"startFrom": "yesterday"}, "spec.startFrom"),
    ("percent over 100", {"disk": {"warnPercent": 180}}, "spec.disk.warnPercent"),
    ("unknown field", {"replicas": 2}, "spec.replicas"),
]


@pytest.mark.parametrize(("case", "change", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_is_rejected_naming_the_field(api_client, namespace, case, change, field):
    body = with_spec_changes(annotationconsumer("invalid"), change)
    assert_rejected_naming(lambda: create(api_client, namespace, body), field)


def test_a_name_too_long_to_label_its_pods_is_refused(api_client, namespace):
    assert_rejected_naming(lambda: create(api_client, namespace, annotationconsumer("c" * 64)), "metadata.name")
    assert not custom(api_client).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]


def events_of(api_client, namespace: str, name: str, reason: str) -> list[client.CoreV1Event]:
    listed = client.CoreV1Api(api_client).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return [event for event in listed.items if event.reason == reason]


def blocked_attempts(operator, reason: str) -> float:
    """The operator's count of child creations stopped for ``reason`` (its /metrics)."""
    wanted = f'azaion_reconcile_blocked_total{{reason="{reason}",resource="AnnotationConsumer"}}'
    line = next((line for line in operator.metrics().splitlines() if line.startswith(wanted)), f"{wanted} 0")
    return float(line.rsplit(" ", 1)[1])


def assert_stuck_quietly(api_client, operator, namespace: str, name: str, reason: str) -> None:
    """Exactly one Event for the cause, and a bounded retry rate (backoff, not a hot loop)."""
    if operator is None:
        pytest.skip("the operator runs outside the tests (--external-operator): its metrics are not here")
    before = blocked_attempts(operator, reason)
    version = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    threading.Event().wait(20)
    # Backoff 5 s, 10 s, 20 s...: at most three attempts in 20 s, each a couple of reads.
    assert blocked_attempts(operator, reason) - before <= 3
    after = custom(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert after["metadata"]["resourceVersion"] == version["metadata"]["resourceVersion"], "no status rewrites"
    assert len(events_of(api_client, namespace, name, reason)) == 1
    assert deployment(api_client, namespace, name) is None


def test_a_missing_data_claim_is_a_condition_and_one_event_and_creating_it_lets_it_start(
    api_client, namespace, rabbitmq_secret, operator
):
    create(api_client, namespace, annotationconsumer("waits", dataVolume={"claimName": "late-data"}))
    wait_until(lambda: condition(api_client, namespace, "waits", "Reconciled").get("status") == "False", 20, "a cause")
    stuck = condition(api_client, namespace, "waits", "Reconciled")
    assert stuck["reason"] == "ClaimNotFound"
    assert "spec.dataVolume.claimName" in stuck["message"] and "late-data" in stuck["message"]
    # The condition and the phase are two writes (children, then health): the phase follows.
    wait_until(lambda: status_of(api_client, namespace, "waits").get("phase") == "Pending", 10, "phase Pending")
    assert_stuck_quietly(api_client, operator, namespace, "waits", "ClaimNotFound")

    client.CoreV1Api(api_client).create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "late-data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    wait_until(lambda: deployment(api_client, namespace, "waits") is not None, 90, "the Deployment after the fix")
    wait_until(lambda: condition(api_client, namespace, "waits", "Reconciled").get("status") == "True", 20, "fixed")
    assert len(events_of(api_client, namespace, "waits", "ChildrenCreated")) == 1


def test_a_child_the_api_server_refuses_is_a_condition_quoting_it_and_recovers(
    api_client, namespace, rabbitmq_secret, operator
):
    # A quota only the cluster knows: the namespace may hold one claim (the data claim) and no more.
    core = client.CoreV1Api(api_client)
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "claims"}, "spec": {"hard": {"persistentvolumeclaims": "1"}}}
    )
    wait_until(lambda: core.read_namespaced_resource_quota("claims", namespace).status.used, 20, "the quota to count")
    create(api_client, namespace, annotationconsumer("quota"))
    wait_until(lambda: condition(api_client, namespace, "quota", "Reconciled").get("status") == "False", 20, "a cause")
    stuck = condition(api_client, namespace, "quota", "Reconciled")
    assert stuck["reason"] == "ChildRejected"
    assert "PersistentVolumeClaim 'quota-offset'" in stuck["message"] and "exceeded quota" in stuck["message"]
    assert_stuck_quietly(api_client, operator, namespace, "quota", "ChildRejected")

    core.delete_namespaced_resource_quota("claims", namespace)
    wait_until(lambda: deployment(api_client, namespace, "quota") is not None, 90, "the Deployment after the fix")
    wait_until(lambda: condition(api_client, namespace, "quota", "Reconciled").get("status") == "True", 20, "fixed")


def test_a_pod_no_node_can_run_is_named_in_available_with_one_event_until_the_spec_is_fixed(
    api_client, namespace, rabbitmq_secret
):
    nowhere = {"nodeSelector": {"azaion.local/no-such-node": "true"}}
    create(api_client, namespace, annotationconsumer("nowhere", resources=nowhere))

    def named() -> bool:
        return condition(api_client, namespace, "nowhere", "Available").get("reason") == "Unschedulable"

    wait_until(named, 60, "the scheduler's reason in the Available condition")
    available = condition(api_client, namespace, "nowhere", "Available")
    assert available["status"] == "False" and "node" in available["message"]
    threading.Event().wait(5)  # a few resyncs later: still one Event for the cause
    assert len(events_of(api_client, namespace, "nowhere", "Unschedulable")) == 1

    custom(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "nowhere", {"spec": {"resources": {"nodeSelector": None}}}
    )
    wait_until(
        lambda: status_of(api_client, namespace, "nowhere").get("phase") == "Running", 90, "Running after the fix"
    )
    assert condition(api_client, namespace, "nowhere", "Available")["status"] == "True"


def test_a_stored_spec_the_operator_model_refuses_shows_as_a_condition(api_client, namespace, rabbitmq_secret):
    with crd_without_bound(api_client, f"{PLURAL}.{GROUP}", ["spec", "rabbitmq", "port"], "maximum"):
        body = annotationconsumer("legacy")
        body["spec"]["rabbitmq"]["port"] = 70000

        def stored() -> bool:
            try:
                create(api_client, namespace, body)
                return True
            except ApiException as error:  # the looser schema takes a moment to be served
                if error.status != 422:
                    raise
                return False

        wait_until(stored, 20, "the looser CRD to accept port 70000")
    wait_until(
        lambda: condition(api_client, namespace, "legacy", "Reconciled").get("reason") == "InvalidSpec",
        20,
        "the InvalidSpec condition",
    )
    reconciled = condition(api_client, namespace, "legacy", "Reconciled")
    assert reconciled["status"] == "False"
    assert "spec.rabbitmq.port: Input should be less than or equal to 65535" in reconciled["message"]
    assert deployment(api_client, namespace, "legacy") is None
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert [e.reason for e in events if e.involved_object.name == "legacy"] == ["InvalidSpec"]
