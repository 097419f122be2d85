"""The TrainingRun operator, running for real against the control plane.

Pod outcomes are played by kwok from pod annotations (hack/kwok-stages.yaml):
``azaion.local/exit-code`` makes the trainer exit with that code and
``azaion.local/hold`` keeps it running. Those tests need the simulated node.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from azaion_devtools.cluster import start_operator, trainingrun
from azaion_devtools.processes import wait_until
from tests.fixtures.kube import client_as_service_account, crd_without_bound
from tests.fixtures.resources import assert_rejected_naming, with_spec_changes

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator", "data_claim")]

GROUP, VERSION, PLURAL = "ai.azaion.com", "v1alpha1", "trainingruns"
HOLD = {"azaion.local/hold": "true"}


@pytest.fixture
def simulated(cluster):
    if not cluster.simulated:
        pytest.skip("steers pod outcomes through kwok; needs the local control plane")


def run_body(name: str, **spec: Any) -> dict[str, Any]:
    """Retries without backoff, so failure tests finish quickly."""
    return trainingrun(name, **{"failurePolicy": {"backoffSeconds": 0}, **spec})


def create_run(api_client, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def get_run(api_client, namespace: str, name: str) -> dict[str, Any]:
    return client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_spec(api_client, namespace: str, name: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}
    )


def status_of(api_client, namespace: str, name: str) -> dict[str, Any]:
    return get_run(api_client, namespace, name).get("status") or {}


def wait_phase(api_client, namespace: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    wait_until(
        lambda: status_of(api_client, namespace, name).get("phase") == phase,
        timeout,
        f"{name} to reach {phase} (now {status_of(api_client, namespace, name).get('phase')})",
    )
    return status_of(api_client, namespace, name)


def jobs_of(api_client, namespace: str, name: str) -> list[client.V1Job]:
    return (
        client.BatchV1Api(api_client)
        .list_namespaced_job(namespace, label_selector=f"ai.azaion.com/trainingrun={name}")
        .items
    )


def pods_of(api_client, namespace: str, name: str) -> list[client.V1Pod]:
    return (
        client.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"ai.azaion.com/trainingrun={name}")
        .items
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == kind)


def release(api_client, namespace: str, name: str) -> None:
    """Let the held trainer finish (kwok then completes the pod)."""
    for pod in pods_of(api_client, namespace, name):
        client.CoreV1Api(api_client).patch_namespaced_pod(
            pod.metadata.name, namespace, {"metadata": {"annotations": {"azaion.local/hold": None}}}
        )


def test_apply_creates_the_expected_job_quickly_and_the_run_succeeds(api_client, namespace):
    core = client.CoreV1Api(api_client)
    secret_values = {"AWS_ACCESS_KEY_ID": "AKIA-NEVER-IN-SPEC", "AWS_SECRET_ACCESS_KEY": "s3cr3t-NEVER-IN-SPEC"}
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="s3"), string_data=secret_values)
    )
    core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="model-key"), string_data={"key": "k" * 64})
    )
    body = run_body(
        "quick",
        resources={"gpus": 1, "shmSize": "4Gi", "memory": "16Gi"},
        publish={
            "s3": {"bucket": "models", "endpoint": "http://s3.local:9000", "credentialsSecretRef": {"name": "s3"}},
            "encryptionKeySecretRef": {"name": "model-key", "key": "key"},
        },
    )
    started = time.monotonic()
    created = create_run(api_client, namespace, body)
    wait_until(lambda: jobs_of(api_client, namespace, "quick"), 10, "the training Job")
    latency = time.monotonic() - started
    assert latency < 2.0, f"Job appeared after {latency:.2f}s"

    (job,) = jobs_of(api_client, namespace, "quick")
    pod_spec = job.spec.template.spec
    (trainer,) = pod_spec.containers
    assert job.metadata.name == "quick-a1"
    assert job.spec.backoff_limit == 0
    assert job.spec.pod_replacement_policy == "Failed"
    rules = job.spec.pod_failure_policy.rules
    assert rules[0].action == "FailJob" and 78 in rules[0].on_exit_codes.values
    assert rules[1].action == "Ignore" and rules[1].on_pod_conditions[0].type == "DisruptionTarget"
    assert trainer.resources.limits["nvidia.com/gpu"] == "1"
    assert pod_spec.runtime_class_name == "nvidia"
    shm = next(v for v in pod_spec.volumes if v.name == "dshm")
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "4Gi"
    assert any(m.mount_path == "/dev/shm" for m in trainer.volume_mounts)
    assert pod_spec.security_context.run_as_non_root is True
    assert pod_spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert trainer.security_context.allow_privilege_escalation is False
    assert trainer.security_context.capabilities.drop == ["ALL"]
    assert trainer.liveness_probe.var_exec.command[:3] == ["python", "-m", "azaion_workloads.heartbeat"]
    (owner,) = job.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "TrainingRun",
        "quick",
        created["metadata"]["uid"],
        True,
    )
    env = {e.name: e for e in trainer.env}
    assert env["AWS_SECRET_ACCESS_KEY"].value is None
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3"
    serialized = json.dumps(api_client.sanitize_for_serialization(job))
    for secret in [*secret_values.values(), "k" * 64]:
        assert secret not in serialized

    status = wait_phase(api_client, namespace, "quick", "Succeeded")
    assert status["attempts"] == 1 and status["failures"] == 0
    assert status["image"] == "registry.local/azaion/training:test"
    assert condition(status, "Succeeded")["status"] == "True"
    assert status["completionTime"]


def test_retryable_failure_starts_a_new_attempt_until_the_budget_is_spent(api_client, namespace, simulated):
    body = run_body(
        "flaky",
        resources={"gpus": 0},
        podAnnotations={"azaion.local/exit-code": "1"},
        failurePolicy={"maxFailures": 2, "backoffSeconds": 0},
    )
    create_run(api_client, namespace, body)
    status = wait_phase(api_client, namespace, "flaky", "Failed")
    assert status["attempts"] == 2
    assert status["failures"] == 2
    failed = condition(status, "Failed")
    assert failed["reason"] == "FailureBudgetExhausted"
    assert "exit code 1" in failed["message"]
    assert [r["exitCode"] for r in status["attemptHistory"]] == [1, 1]
    assert sorted(j.metadata.name for j in jobs_of(api_client, namespace, "flaky")) == ["flaky-a1", "flaky-a2"]


def test_permanent_exit_code_fails_at_once_without_a_new_job(api_client, namespace, simulated):
    create_run(
        api_client,
        namespace,
        run_body("bad-data", resources={"gpus": 0}, podAnnotations={"azaion.local/exit-code": "78"}),
    )
    status = wait_phase(api_client, namespace, "bad-data", "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "PermanentError"
    assert "78" in failed["message"]
    time.sleep(2)  # a wrong retry would show up within a couple of reconcile intervals
    assert [j.metadata.name for j in jobs_of(api_client, namespace, "bad-data")] == ["bad-data-a1"]
    assert status_of(api_client, namespace, "bad-data")["attempts"] == 1

    def reasons() -> set[str]:
        events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        return {e.reason for e in events if e.involved_object.name == "bad-data"}

    wait_until(lambda: {"AttemptStarted", "PermanentError"} <= reasons(), 10, "an Event per transition")


@pytest.fixture
def cpu_policy(api_client, namespace) -> Iterator[None]:
    """A cluster policy that refuses Jobs with more than 2 CPUs in ``namespace`` (422, reason Invalid).

    The CRD refuses every spec the Job's own validation would; a policy of the
    cluster is what can still refuse a Job built from an admitted run.
    """
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"azaion-test-cpu-{namespace}"[:63]
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}
                    ]
                },
                "validations": [
                    {
                        "expression": "object.spec.template.spec.containers.all(c, !has(c.resources.limits)"
                        " || !('cpu' in c.resources.limits)"
                        " || quantity(c.resources.limits['cpu']).compareTo(quantity('2')) <= 0)",
                        "message": "cpu limits above 2 are not allowed in this namespace",
                        "reason": "Invalid",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
            },
        }
    )

    def enforced() -> bool:
        probe = {
            "metadata": {"name": "policy-probe"},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "4"}}}],
                    }
                }
            },
        }
        try:
            client.BatchV1Api(api_client).create_namespaced_job(namespace, probe, dry_run="All")
        except ApiException as error:
            return error.status == 422
        return False

    try:
        wait_until(enforced, 30, "the CPU policy to be enforced")
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)


def test_a_job_the_api_server_refuses_shows_as_a_condition_with_one_event_and_recovers_after_a_fix(
    api_client, namespace, operator, cpu_policy
):
    # The spec is valid (the CRD admits it); the cluster's policy refuses the Job built from it.
    create_run(api_client, namespace, run_body("refused", resources={"gpus": 0, "cpu": "4"}))

    def rejected() -> bool:
        conditions = status_of(api_client, namespace, "refused").get("conditions") or []
        return any(c["type"] == "Progressing" and c["reason"] == "ChildRejected" for c in conditions)

    wait_until(rejected, 30, "the ChildRejected condition")
    status = status_of(api_client, namespace, "refused")
    progressing = condition(status, "Progressing")
    assert progressing["status"] == "False" and status["phase"] == "Pending"
    assert "Job" in progressing["message"] and "cpu" in progressing["message"], progressing["message"]
    assert not jobs_of(api_client, namespace, "refused")

    def rejections() -> list[Any]:
        events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        return [e for e in events if e.involved_object.name == "refused" and e.reason == "ChildRejected"]

    time.sleep(4)  # several reconcile intervals: a hot retry would post again and keep failing
    (event,) = rejections()
    assert event.type == "Warning" and (event.count or 1) == 1

    # Fixing the spec makes it proceed by itself.
    patch_spec(api_client, namespace, "refused", {"resources": {"cpu": "1"}})
    wait_until(lambda: jobs_of(api_client, namespace, "refused"), 30, "the Job after the fix")
    wait_until(lambda: "rejectedGeneration" not in status_of(api_client, namespace, "refused"), 30, "cleared")
    assert status_of(api_client, namespace, "refused")["attempts"] == 1


def test_oom_is_named_in_the_reason(api_client, namespace, simulated):
    body = run_body(
        "hungry",
        resources={"gpus": 0},
        podAnnotations={"azaion.local/exit-code": "137", "azaion.local/reason": "OOMKilled"},
        failurePolicy={"maxFailures": 1, "backoffSeconds": 0},
    )
    create_run(api_client, namespace, body)
    status = wait_phase(api_client, namespace, "hungry", "Failed")
    assert status["attemptHistory"][0]["reason"] == "OOMKilled"
    assert "OOMKilled" in condition(status, "Failed")["message"]


def test_eviction_counts_as_preemption_not_failure(api_client, namespace, simulated):
    core = client.CoreV1Api(api_client)
    create_run(api_client, namespace, run_body("evicted", resources={"gpus": 0}, podAnnotations=HOLD))
    wait_phase(api_client, namespace, "evicted", "Running")
    (pod,) = pods_of(api_client, namespace, "evicted")
    core.create_namespaced_pod_eviction(
        pod.metadata.name,
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace)),
    )
    wait_until(lambda: status_of(api_client, namespace, "evicted").get("preemptions") == 1, 20, "preemptions=1")
    status = status_of(api_client, namespace, "evicted")
    assert status["failures"] == 0
    assert status["attempts"] == 1  # the Job replaced the pod itself
    wait_until(
        lambda: any(p.metadata.name != pod.metadata.name for p in pods_of(api_client, namespace, "evicted")),
        20,
        "a replacement pod",
    )
    release(api_client, namespace, "evicted")
    status = wait_phase(api_client, namespace, "evicted", "Succeeded")
    assert (status["failures"], status["preemptions"]) == (0, 1)


def test_gpu_queue_orders_by_priority_then_arrival(api_client, cluster, namespace, simulated):
    gpus = sum(
        int((n.status.allocatable or {}).get("nvidia.com/gpu", 0))
        for n in client.CoreV1Api(api_client).list_node().items
    )
    if gpus != 1:
        pytest.skip("needs exactly one GPU")
    create_run(api_client, namespace, run_body("first", podAnnotations=HOLD))
    wait_phase(api_client, namespace, "first", "Running")
    create_run(api_client, namespace, run_body("second", podAnnotations=HOLD))
    status = wait_phase(api_client, namespace, "second", "Queued")
    assert status["queuePosition"] == 1
    assert not jobs_of(api_client, namespace, "second")

    create_run(api_client, namespace, run_body("urgent", priority=10, podAnnotations=HOLD))
    wait_phase(api_client, namespace, "urgent", "Queued")
    wait_until(lambda: status_of(api_client, namespace, "urgent").get("queuePosition") == 1, 10, "urgent at the head")
    wait_until(lambda: status_of(api_client, namespace, "second").get("queuePosition") == 2, 10, "second behind it")

    release(api_client, namespace, "first")
    wait_phase(api_client, namespace, "first", "Succeeded")
    wait_phase(api_client, namespace, "urgent", "Running", timeout=20)
    assert status_of(api_client, namespace, "second")["phase"] == "Queued"
    # Places move up when the next plan shows them (at most every 2 s, and at each resync).
    wait_until(lambda: status_of(api_client, namespace, "second").get("queuePosition") == 1, 10, "second moving up")
    assert status_of(api_client, namespace, "second")["phase"] == "Queued"

    release(api_client, namespace, "urgent")
    wait_phase(api_client, namespace, "second", "Running", timeout=20)


def test_cpu_runs_do_not_wait_for_gpus(api_client, namespace, simulated):
    create_run(api_client, namespace, run_body("gpu-hog", resources={"gpus": 8}, podAnnotations=HOLD))
    wait_phase(api_client, namespace, "gpu-hog", "Queued")
    create_run(api_client, namespace, run_body("on-cpu", resources={"gpus": 0}))
    status = wait_phase(api_client, namespace, "on-cpu", "Succeeded")
    (job,) = jobs_of(api_client, namespace, "on-cpu")
    assert "nvidia.com/gpu" not in (job.spec.template.spec.containers[0].resources.limits or {})
    assert job.spec.template.spec.runtime_class_name is None
    assert status["attempts"] == 1


def test_suspend_stops_the_job_and_unsuspend_resumes_with_a_new_attempt(api_client, namespace, simulated):
    create_run(api_client, namespace, run_body("pausable", resources={"gpus": 0}, podAnnotations=HOLD))
    wait_phase(api_client, namespace, "pausable", "Running")
    patch_spec(api_client, namespace, "pausable", {"suspend": True})
    status = wait_phase(api_client, namespace, "pausable", "Suspended")
    wait_until(lambda: not jobs_of(api_client, namespace, "pausable"), 20, "the Job to be deleted")
    assert status["failures"] == 0
    assert status["attemptHistory"][0]["outcome"] == "Stopped"

    patch_spec(api_client, namespace, "pausable", {"suspend": False})
    wait_until(lambda: status_of(api_client, namespace, "pausable").get("attempts") == 2, 20, "attempt 2")
    wait_phase(api_client, namespace, "pausable", "Running")
    assert [j.metadata.name for j in jobs_of(api_client, namespace, "pausable")] == ["pausable-a2"]


def test_delete_removes_jobs_and_pods_but_not_the_data_claim(api_client, namespace, simulated):
    core = client.CoreV1Api(api_client)
    create_run(api_client, namespace, run_body("doomed", resources={"gpus": 0}, podAnnotations=HOLD))
    wait_phase(api_client, namespace, "doomed", "Running")
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")
    wait_until(lambda: not jobs_of(api_client, namespace, "doomed"), 30, "the Jobs to be garbage-collected")
    wait_until(lambda: not pods_of(api_client, namespace, "doomed"), 30, "the pods to go")
    assert core.read_namespaced_persistent_volume_claim("azaion-data", namespace).metadata.deletion_timestamp is None


def test_operator_killed_mid_reconcile_never_duplicates_a_job(
    api_client, crds, namespace, operator, tmp_path, simulated
):
    if operator is None:
        pytest.skip("the operator is external")
    operator.stop()
    try:
        doomed, _ = start_operator(crds, tmp_path)
        names = [f"burst-{i}" for i in range(8)]
        for name in names:
            create_run(api_client, namespace, run_body(name, resources={"gpus": 0}, podAnnotations=HOLD))
        time.sleep(0.5)
        doomed.kill()  # SIGKILL in the middle of the burst
    finally:
        operator.start()
    for name in names:
        wait_phase(api_client, namespace, name, "Running")
    time.sleep(2)  # a duplicate would appear within a couple of reconcile intervals
    for name in names:
        jobs = [j.metadata.name for j in jobs_of(api_client, namespace, name)]
        assert jobs == [f"{name}-a1"], f"{name}: {jobs}"
        assert status_of(api_client, namespace, name)["attempts"] == 1


INVALID_SPECS = [
    ("wrong type", {"training": {"epochs": "many"}}, "spec.training.epochs"),
    ("negative epochs", {"training": {"epochs": -1}}, "spec.training.epochs"),
    ("unknown field", {"trainingg": {}}, "spec.trainingg"),
    (
        "inline secret",
        {"publish": {"s3": {"bucket": "b", "accessKey": "x", "credentialsSecretRef": {"name": "s"}}}},
        "spec.publish.s3.accessKey",
    ),
    ("no storage", {"storage": None}, "spec.storage"),
    ("imgsz not a multiple of 32", {"training": {"imgsz": 100}}, "spec.training.imgsz"),
    ("split not 100", {"dataset": {"split": {"train": 50, "valid": 20, "test": 10}}}, "spec.dataset.split"),
    ("negative gpus", {"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ("bad quantity", {"resources": {"shmSize": "lots"}}, "spec.resources.shmSize"),
    ("extra arg not allowed", {"training": {"extraArgs": {"project": "/etc"}}}, "spec.training.extraArgs.project"),
    ("both model and fromRun", {"fromRun": "older"}, "spec"),
    ("bad optimizer", {"training": {"optimizer": "Magic"}}, "spec.training.optimizer"),
    ("bad priority", {"priority": 100000}, "spec.priority"),
]


@pytest.mark.parametrize(("case", "change", "field"), INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS])
def test_invalid_spec_is_rejected_naming_the_field(api_client, namespace, case, change, field):
    body = with_spec_changes(run_body("invalid"), change)
    assert_rejected_naming(lambda: create_run(api_client, namespace, body), field)
    with pytest.raises(ApiException) as missing:
        get_run(api_client, namespace, "invalid")
    assert missing.value.status == 404


def test_a_name_too_long_to_label_its_pods_is_refused_and_63_is_accepted(api_client, namespace):
    too_long = "r" * 64
    assert_rejected_naming(lambda: create_run(api_client, namespace, run_body(too_long)), "metadata.name")
    with pytest.raises(ApiException) as missing:
        get_run(api_client, namespace, too_long)
    assert missing.value.status == 404
    create_run(api_client, namespace, run_body("r" * 63, resources={"gpus": 0}, suspend=True))
    assert get_run(api_client, namespace, "r" * 63)["metadata"]["name"] == "r" * 63


def test_epochs_cannot_change_after_creation(api_client, namespace):
    create_run(api_client, namespace, run_body("fixed", resources={"gpus": 0}, suspend=True))
    with pytest.raises(ApiException) as rejected:
        patch_spec(api_client, namespace, "fixed", {"training": {"epochs": 99}})
    assert rejected.value.status == 422
    message = json.loads(rejected.value.body)["message"]
    assert "spec.training.epochs" in message and "cannot change" in message
    assert get_run(api_client, namespace, "fixed")["spec"]["training"]["epochs"] == 3


def test_ttl_after_finished_removes_jobs_but_keeps_the_run(api_client, namespace):
    create_run(api_client, namespace, run_body("short-lived", resources={"gpus": 0}, ttlSecondsAfterFinished=1))
    status = wait_phase(api_client, namespace, "short-lived", "Succeeded")
    wait_until(lambda: not jobs_of(api_client, namespace, "short-lived"), 30, "the finished run's Jobs to be deleted")
    kept = get_run(api_client, namespace, "short-lived")
    assert kept["status"]["phase"] == "Succeeded"
    assert kept["status"]["completionTime"] == status["completionTime"]


def test_operator_exports_prometheus_metrics(api_client, namespace, operator):
    if operator is None:
        pytest.skip("the operator is external")
    create_run(api_client, namespace, run_body("counted", resources={"gpus": 0}))
    wait_phase(api_client, namespace, "counted", "Succeeded")

    def succeeded_runs() -> float:
        for line in operator.metrics().splitlines():
            if line.startswith('azaion_trainingruns{phase="Succeeded"}'):
                return float(line.split()[-1])
        return 0.0

    wait_until(lambda: succeeded_runs() >= 1, 20, "azaion_trainingruns{phase=Succeeded} to count the run")
    text = operator.metrics()
    assert "azaion_trainingrun_attempts_total" in text
    assert "azaion_reconcile_duration_seconds_count" in text


def test_trainer_identity_reports_progress_to_its_own_run_only(api_client, namespace):
    from azaion_workloads.status import KubernetesStatusReporter

    create_run(api_client, namespace, run_body("reporter", resources={"gpus": 0}, suspend=True))
    create_run(api_client, namespace, run_body("neighbour", resources={"gpus": 0}, suspend=True))
    wait_phase(api_client, namespace, "reporter", "Suspended")
    # The identity exists once the first attempt starts; unsuspend to get it made.
    patch_spec(api_client, namespace, "reporter", {"suspend": False})
    rbac = client.RbacAuthorizationV1Api(api_client)
    wait_until(lambda: rbac.read_namespaced_role_binding("reporter-trainer", namespace), 20, "the trainer identity")
    with client_as_service_account(api_client, namespace, "reporter-trainer") as trainer_api:
        trainer = client.CustomObjectsApi(trainer_api)
        reporter = KubernetesStatusReporter(PLURAL, namespace, "reporter", api=trainer)
        reporter.report({"progress": {"step": "training", "epoch": 2, "epochs": 3, "metrics": {"map50_95": 0.41}}})
        progress = status_of(api_client, namespace, "reporter")["progress"]
        assert (progress["epoch"], progress["metrics"]["map50_95"]) == (2, 0.41)
        assert status_of(api_client, namespace, "reporter")["phase"] in ("Pending", "Running", "Succeeded")

        with pytest.raises(ApiException) as forbidden:
            trainer.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, "neighbour", {"status": {"progress": {"epoch": 99}}}
            )
        assert forbidden.value.status == 403
        with pytest.raises(ApiException) as spec_forbidden:
            trainer.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "reporter", {"spec": {"priority": 5}}
            )
        assert spec_forbidden.value.status == 403
        with pytest.raises(ApiException) as secrets_forbidden:
            client.CoreV1Api(trainer_api).list_namespaced_secret(namespace)
        assert secrets_forbidden.value.status == 403
    assert "progress" not in status_of(api_client, namespace, "neighbour")


def test_the_trainers_mlflow_reports_become_the_tracking_condition(api_client, namespace, simulated):
    from azaion_workloads.status import KubernetesStatusReporter

    tracking = {"mlflow": {"trackingUri": "http://mlflow.invalid:5000"}}
    create_run(
        api_client, namespace, run_body("tracked", resources={"gpus": 0}, podAnnotations=HOLD, tracking=tracking)
    )
    wait_phase(api_client, namespace, "tracked", "Running")
    rbac = client.RbacAuthorizationV1Api(api_client)
    wait_until(lambda: rbac.read_namespaced_role_binding("tracked-trainer", namespace), 20, "the trainer identity")

    def shown() -> dict[str, Any]:
        return next(
            (c for c in status_of(api_client, namespace, "tracked").get("conditions") or [] if c["type"] == "Tracking"),
            {},
        )

    with client_as_service_account(api_client, namespace, "tracked-trainer") as trainer_api:
        reporter = KubernetesStatusReporter(PLURAL, namespace, "tracked", api=client.CustomObjectsApi(trainer_api))
        reporter.report(
            {"mlflow": {"state": "Retrying", "pending": 3, "failures": 2, "lastError": "ConnectionError: refused"}}
        )
        wait_until(lambda: shown().get("reason") == "TrackingServerUnavailable", 15, "the Tracking condition")
        assert shown()["status"] == "False" and "ConnectionError: refused" in shown()["message"]
        assert status_of(api_client, namespace, "tracked")["phase"] == "Running"  # training goes on

        reporter.report({"mlflow": {"state": "Logging", "runId": "abc123", "pending": 0}})
        wait_until(lambda: shown().get("reason") == "Logging", 15, "the Tracking condition to recover")
        assert shown()["status"] == "True" and "abc123" in shown()["message"]
    release(api_client, namespace, "tracked")
    status = wait_phase(api_client, namespace, "tracked", "Succeeded")
    assert condition(status, "Tracking")["reason"] == "Logging"


@pytest.fixture
def looser_crd(api_client):
    with crd_without_bound(api_client, f"{PLURAL}.{GROUP}", ["spec", "priority"], "maximum"):
        yield


def test_a_stored_spec_the_operator_model_refuses_shows_as_a_condition_not_a_retry_loop(
    api_client, namespace, looser_crd, operator
):
    def reconcile_errors() -> float:
        if operator is None:  # --external-operator: its metrics are not ours to read
            return 0.0
        for line in operator.metrics().splitlines():
            if line.startswith('azaion_reconcile_errors_total{kind="TrainingRun"}'):
                return float(line.split()[-1])
        return 0.0

    errors_before = reconcile_errors()

    def stored() -> bool:
        try:
            create_run(api_client, namespace, run_body("legacy", resources={"gpus": 0}, priority=5000))
            return True
        except ApiException as error:  # the looser schema takes a moment to be served
            if error.status != 422:
                raise
            return False

    wait_until(stored, 20, "the looser CRD to accept priority 5000")

    def progressing() -> dict[str, Any]:
        return condition(status_of(api_client, namespace, "legacy"), "Progressing")

    wait_until(lambda: progressing()["reason"] == "InvalidSpec", 20, "the InvalidSpec condition")
    assert progressing()["status"] == "False"
    assert "spec.priority: Input should be less than or equal to 1000" in progressing()["message"]
    time.sleep(3)  # several resyncs: the refusal is said once, and nothing is retried hot
    assert not jobs_of(api_client, namespace, "legacy")
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert [e.reason for e in events if e.involved_object.name == "legacy"] == ["InvalidSpec"]
    assert reconcile_errors() == errors_before
