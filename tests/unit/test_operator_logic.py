"""The operator's pure parts: generated CRDs, the state machine, the queue, the Job builder."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from azaion_contract.models.trainingrun import Phase, TrainingRunSpec, TrainingRunStatus
from azaion_contract.training_options import ALLOWED_EXTRA_ARGS
from azaion_operator import crdgen
from azaion_operator.config import OperatorConfig
from azaion_operator.kit.names import job_name
from azaion_operator.trainingrun.builders import build_job, build_trainer_identity
from azaion_operator.trainingrun.lifecycle import Admission, Decision, child_rejected, decide, needs_admission
from azaion_operator.trainingrun.queue import Waiting, free_gpus, plan

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
META = {"name": "run", "namespace": "ml", "uid": "u-1", "generation": 1, "creationTimestamp": "2026-11-23T11:00:00Z"}


def spec(**overrides) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate({"model": "yolo26n.yaml", "storage": {"claimName": "data"}, **overrides})


def job(*, complete: bool = False, failed_reason: str | None = None, message: str = "") -> dict:
    conditions = []
    if complete:
        conditions.append({"type": "Complete", "status": "True"})
    if failed_reason:
        conditions.append({"type": "Failed", "status": "True", "reason": failed_reason, "message": message})
    return {"metadata": {"name": "run-a1"}, "status": {"conditions": conditions}}


def failed_pod(exit_code: int, reason: str = "Error") -> dict:
    return {
        "metadata": {"name": "run-a1-x", "creationTimestamp": "2026-11-23T11:30:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "reason": reason}}}
            ],
        },
    }


RUNNING_STATUS = {
    "phase": "Running",
    "attempts": 1,
    "image": "img:1",
    "attemptHistory": [{"attempt": 1, "jobName": "run-a1", "outcome": "Running"}],
}


def test_generated_crds_are_up_to_date():
    assert crdgen.main(["--check"]) == 0, "crds/ is stale: run azaion-crdgen"


def test_every_spec_field_has_a_description():
    crd = crdgen.build_crd(crdgen.sources()[0])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def walk(node: dict, path: str) -> list[str]:
        missing = [] if node.get("description") or path == "spec" else [path]
        for name, child in (node.get("properties") or {}).items():
            if path.endswith("extraArgs"):
                continue
            missing += walk(child, f"{path}.{name}")
        return missing

    assert walk(schema, "spec") == []


def test_extra_args_schema_matches_the_workload_allow_list():
    crd = crdgen.build_crd(crdgen.sources()[0])
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    assert set(training["properties"]["extraArgs"]["properties"]) == set(ALLOWED_EXTRA_ARGS)


def test_first_reconcile_of_a_cpu_run_starts_attempt_one():
    decision = decide(META, spec(resources={"gpus": 0}), {}, None, [], NOW, "img:default")
    assert decision.create_attempt == 1
    assert decision.status["attempts"] == 1
    assert decision.status["image"] == "img:default"
    assert decision.status["phase"] == "Pending"
    assert decision.events and decision.events[0][1] == "AttemptStarted"


def test_gpu_run_without_admission_is_queued_with_its_position():
    decision = decide(META, spec(), {}, None, [], NOW, "img", Admission(admitted=False, position=3))
    assert decision.create_attempt is None
    assert (decision.status["phase"], decision.status["queuePosition"]) == ("Queued", 3)


def test_retryable_failure_schedules_a_backed_off_retry():
    decision = decide(
        META,
        spec(failurePolicy={"backoffSeconds": 10}),
        RUNNING_STATUS,
        job(failed_reason="BackoffLimitExceeded"),
        [failed_pod(1)],
        NOW,
        "img",
    )
    assert decision.create_attempt is None
    assert decision.status["failures"] == 1
    assert decision.status["nextAttemptAt"] == "2026-11-23T12:00:10Z"
    assert decision.status["attemptHistory"][0]["exitCode"] == 1
    # Deciding again on the same state changes nothing (a replayed event).
    replay = decide(
        META, spec(), {**RUNNING_STATUS, **decision.status}, job(failed_reason="x"), [failed_pod(1)], NOW, "img"
    )
    assert replay.status["failures"] == 1
    assert replay.create_attempt is None


def test_a_trainer_that_exited_zero_before_its_job_completes_stays_running_not_pending():
    finished = {"metadata": {"name": "run-a1-x"}, "status": {"phase": "Succeeded"}}
    decision = decide(META, spec(), RUNNING_STATUS, job(), [finished], NOW, "img")
    assert decision.status["phase"] == "Running"
    assert decision.create_attempt is None and decision.status["failures"] == 0
    ready = next(c for c in decision.status["conditions"] if c["type"] == "Progressing")
    assert ready["reason"] == "TrainerFinished"


def test_only_failed_attempts_count_as_failures_for_the_metric():
    failed = decide(META, spec(), RUNNING_STATUS, job(failed_reason="BackoffLimitExceeded"), [failed_pod(1)], NOW, "i")
    assert len(failed.failed_attempts) == 1
    replay = decide(
        META, spec(), {**RUNNING_STATUS, **failed.status}, job(failed_reason="x"), [failed_pod(1)], NOW, "i"
    )
    assert replay.failed_attempts == [], "a replayed event counts nothing twice"

    evicted = failed_pod(137, "Error")
    evicted["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    ]
    disrupted = decide(META, spec(), RUNNING_STATUS, job(failed_reason="BackoffLimitExceeded"), [evicted], NOW, "i")
    assert disrupted.status["preemptions"] == 1, disrupted.status
    assert ("Warning", "RetryingAfterDisruption") in [e[:2] for e in disrupted.events], "it still warns"
    assert disrupted.failed_attempts == [], "a disruption is not a failure"


def test_a_refused_child_waits_for_a_new_generation_with_one_warning():
    refused = child_rejected(META, {}, "Job", 'Job.batch "run-a1" is invalid: cpu must be >= 0', NOW)
    assert refused.status["phase"] == "Pending" and refused.status["rejectedGeneration"] == META["generation"]
    progressing = next(c for c in refused.status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "False" and progressing["reason"] == "ChildRejected"
    assert "cpu must be >= 0" in progressing["message"]
    assert [e[:2] for e in refused.events] == [("Warning", "ChildRejected")]
    again = child_rejected(META, refused.status, "Job", "same", NOW)
    assert again.events == [], "one Event per cause, not one per try"


def test_retry_after_backoff_keeps_the_recorded_image():
    status = {
        **RUNNING_STATUS,
        "image": "img:old",
        "nextAttemptAt": "2026-11-23T11:59:00Z",
        "attemptHistory": [{"attempt": 1, "jobName": "run-a1", "outcome": "Failed"}],
    }
    assert needs_admission(spec(), status, job(failed_reason="x"))
    decision = decide(META, spec(), status, job(failed_reason="x"), [], NOW, "img:new", Admission(True))
    assert decision.create_attempt == 2
    assert "image" not in decision.status  # recorded once, at the first attempt


def test_permanent_exit_code_fails_the_run():
    decision = decide(
        META,
        spec(),
        RUNNING_STATUS,
        job(failed_reason="PodFailurePolicy", message="Container trainer ... exit code 78 matching FailJob rule"),
        [failed_pod(78)],
        NOW,
        "img",
    )
    assert decision.status["phase"] == "Failed"
    failed = next(c for c in decision.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PermanentError" and "78" in failed["message"]


def test_failure_budget_is_named_when_spent():
    status = {
        **RUNNING_STATUS,
        "attempts": 3,
        "attemptHistory": [
            {"attempt": 1, "jobName": "run-a1", "outcome": "Failed"},
            {"attempt": 2, "jobName": "run-a2", "outcome": "Failed"},
            {"attempt": 3, "jobName": "run-a3", "outcome": "Running"},
        ],
    }
    decision = decide(
        META, spec(), status, job(failed_reason="BackoffLimitExceeded"), [failed_pod(137, "OOMKilled")], NOW, "img"
    )
    failed = next(c for c in decision.status["conditions"] if c["type"] == "Failed")
    assert decision.status["phase"] == "Failed"
    assert failed["reason"] == "FailureBudgetExhausted"
    assert "OOMKilled" in failed["message"]


def test_suspend_deletes_the_active_job_without_counting_a_failure():
    decision = decide(META, spec(suspend=True), RUNNING_STATUS, job(), [], NOW, "img")
    assert decision.delete_jobs == ["run-a1"]
    assert decision.status["phase"] == "Suspended"
    assert decision.status["failures"] == 0
    assert decision.status["attemptHistory"][0]["outcome"] == "Stopped"


def test_deadline_over_all_attempts_fails_the_run():
    status = {**RUNNING_STATUS, "startTime": (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    status["attemptHistory"] = [{"attempt": 1, "jobName": "run-a1", "outcome": "Failed"}]
    decision = decide(META, spec(activeDeadlineSeconds=3600), status, None, [], NOW, "img", Admission(True))
    assert decision.status["phase"] == "Failed"
    assert decision.create_attempt is None


def test_status_patches_are_built_through_the_status_model():
    decision = Decision()
    with pytest.raises(TypeError, match="TrainingRunStatus has no field next_attempt"):
        decision.set_status(next_attempt="2026-11-23T12:00:00Z")  # misspelt
    with pytest.raises(TypeError, match="has no field nextAttemptAt"):
        decision.set_status(nextAttemptAt="2026-11-23T12:00:00Z")  # a wire name is not a field name
    assert decision.status == {}  # nothing half-written
    # camelCase out; None stays in the patch as null, which removes the key (a merge patch).
    decision.set_status(queue_position=None, next_attempt_at="2026-11-23T12:00:00Z", phase=Phase.PENDING)
    assert decision.status == {"queuePosition": None, "nextAttemptAt": "2026-11-23T12:00:00Z", "phase": "Pending"}
    # What decide() writes is exactly what the status writer accepts.
    started = decide(META, spec(resources={"gpus": 0}), {}, None, [], NOW, "img")
    assert TrainingRunStatus.checked(started.status) == started.status


def test_queue_is_priority_then_first_come_and_never_overtaken():
    waiting = [
        Waiting(("ns", "old-big"), 0, "2026-01-01T00:00:00Z", 2),
        Waiting(("ns", "new-small"), 0, "2026-01-02T00:00:00Z", 1),
        Waiting(("ns", "urgent"), 5, "2026-01-03T00:00:00Z", 1),
    ]
    result = plan(waiting, free_gpus=1)
    assert result.admitted == [("ns", "urgent")]
    # old-big waits for two GPUs; new-small may not jump past it.
    assert result.positions == {("ns", "old-big"): 1, ("ns", "new-small"): 2}


def test_free_gpus_subtracts_running_pods_and_reservations():
    nodes = [
        {"status": {"allocatable": {"nvidia.com/gpu": "2"}}},
        {"spec": {"unschedulable": True}, "status": {"allocatable": {"nvidia.com/gpu": "4"}}},
    ]
    pod = {
        "spec": {"nodeName": "n", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"},
    }
    done = {**pod, "status": {"phase": "Succeeded"}}
    assert free_gpus(nodes, [pod, done], reserved=0) == 1
    assert free_gpus(nodes, [pod], reserved=1) == 0


def test_job_names_are_deterministic_and_fit_a_label():
    long = "x" * 80
    assert job_name("run", 3) == "run-a3"
    assert job_name(long, 12) == job_name(long, 12)
    assert len(job_name(long, 12)) <= 63 and job_name(long, 12).endswith("-a12")


def test_job_never_carries_secret_values_and_mounts_the_key_read_only():
    run_spec = spec(
        publish={
            "s3": {"bucket": "models", "credentialsSecretRef": {"name": "creds"}},
            "encryptionKeySecretRef": {"name": "key", "key": "k"},
        },
        model=None,
        fromRun="previous",
    )
    built = build_job(META, run_spec, 2, "img:1", OperatorConfig())
    container = built["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    assert env["TRAINING_FROM_RUN"]["value"] == "previous" and "TRAINING_MODEL" not in env
    mount = next(m for m in container["volumeMounts"] if m["name"] == "encryption-key")
    assert mount["readOnly"] is True
    assert built["metadata"]["name"] == "run-a2"
    assert json.dumps(built).count('"value"') == sum(1 for e in container["env"] if "value" in e)


def test_spec_model_enforces_exactly_one_base_model_like_the_crd():
    with pytest.raises(ValueError, match=r"exactly one of spec\.model and spec\.fromRun"):
        spec(fromRun="previous")
    with pytest.raises(ValueError, match="exactly one"):
        spec(model=None)


def test_trainer_identity_may_only_patch_its_own_run_status():
    _, role, binding = build_trainer_identity(META)
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": ["ai.azaion.com"],
        "resources": ["trainingruns/status"],
        "resourceNames": ["run"],
        "verbs": ["get", "patch"],
    }
    assert binding["subjects"][0]["name"] == "run-trainer"


def test_the_attempt_history_keeps_where_each_attempt_resumed():
    resumed = {"epoch": 3, "batch": 120, "redoneBatches": 4, "pod": "run-a2-x7k2p"}
    status = {
        **RUNNING_STATUS,
        "attempts": 2,
        "progress": {"step": "training", "resumedFrom": resumed},
        "attemptHistory": [
            {"attempt": 1, "jobName": "run-a1", "outcome": "Preempted", "resumedFrom": {"epoch": 0, "batch": 0}},
            {"attempt": 2, "jobName": "run-a2", "outcome": "Running"},
        ],
    }
    running = {"metadata": {"name": "run-a2"}, "status": {"active": 1}}
    decision = decide(META, spec(), status, running, [], NOW, "img")
    first, second = decision.status["attemptHistory"]
    assert second["resumedFrom"] == resumed
    assert first["resumedFrom"] == {"epoch": 0, "batch": 0}, "an earlier attempt keeps its own"

    # A pod of another attempt (a name that only starts alike) is not attributed to this one.
    other = {**status, "progress": {"resumedFrom": {**resumed, "pod": "run-a20-abcde"}}}
    decision = decide(META, spec(), other, running, [], NOW, "img")
    assert "resumedFrom" not in decision.status["attemptHistory"][1]


def test_kueue_holds_the_job_queued_and_each_of_its_preemptions_counts_once():
    from azaion_operator.trainingrun.lifecycle import KueueView

    held = {"metadata": {"name": "run-a1"}, "spec": {"suspend": True}, "status": {}}
    waiting = decide(META, spec(queueName="gpus"), RUNNING_STATUS, held, [], NOW, "img", kueue=KueueView("gpus"))
    progressing = next(c for c in waiting.status["conditions"] if c["type"] == "Progressing")
    assert waiting.status["phase"] == "Queued" and progressing["reason"] == "WaitingForKueue"
    assert "LocalQueue gpus" in progressing["message"]

    preempted = decide(META, spec(queueName="gpus"), RUNNING_STATUS, held, [], NOW, "img", kueue=KueueView("gpus", 1))
    assert preempted.preemptions == 1 and preempted.status["preemptions"] == 1
    assert preempted.status["attemptHistory"][0]["evictions"] == 1
    assert ("Warning", "Preempted") in [e[:2] for e in preempted.events]
    again = decide(
        META,
        spec(queueName="gpus"),
        {**RUNNING_STATUS, **preempted.status},
        held,
        [],
        NOW,
        "img",
        kueue=KueueView("gpus", 1),
    )
    assert again.preemptions == 0 and again.status["preemptions"] == 1, "a replayed reconcile counts nothing twice"
    assert not [e for e in again.events if e[1] == "Preempted"]


def test_a_kueue_run_never_asks_the_built_in_queue():
    from azaion_operator.trainingrun.lifecycle import KueueView

    fresh = {"phase": "Pending"}
    assert needs_admission(spec(), fresh, None)
    assert not needs_admission(spec(queueName="gpus"), fresh, None, KueueView("gpus"))
    decision = decide(META, spec(queueName="gpus"), fresh, None, [], NOW, "img", kueue=KueueView("gpus"))
    assert decision.create_attempt == 1, "Kueue admits the Job; the operator creates it at once (suspended)"


def test_kueue_jobs_are_created_suspended_with_the_queue_label():
    from azaion_operator.config import OperatorConfig
    from azaion_operator.trainingrun.builders import build_job

    job = build_job(META, spec(queueName="team-a"), 1, "img", OperatorConfig())
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    job = build_job(META, spec(), 1, "img", OperatorConfig(queueing="kueue"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "azaion"
    job = build_job(META, spec(), 1, "img", OperatorConfig())
    assert "suspend" not in job["spec"] and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    job = build_job(META, spec(queueName="team-a", workloadPriorityClass="urgent"), 1, "img", OperatorConfig())
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    assert "priorityClassName" not in job["spec"]["template"]["spec"], "Kueue's priority only"
    job = build_job(META, spec(workloadPriorityClass="urgent"), 1, "img", OperatorConfig())
    assert "kueue.x-k8s.io/priority-class" not in job["metadata"]["labels"], "the built-in queue orders by priority"
    with pytest.raises(SystemExit, match="AZAION_QUEUEING"):
        OperatorConfig.from_env({"AZAION_QUEUEING": "volcano"})


def test_an_api_call_to_a_server_that_never_answers_times_out():
    import socket
    import threading
    import time as clock

    import kopf
    from urllib3.exceptions import ReadTimeoutError

    from azaion_operator.kit import apiclient

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    server = kopf.ConnectionInfo(server=f"http://127.0.0.1:{listener.getsockname()[1]}")
    api = apiclient.ApiClient(server, retries=False)
    saved, apiclient.REQUEST_TIMEOUT_SECONDS = apiclient.REQUEST_TIMEOUT_SECONDS, 0.5
    raised: list[BaseException] = []

    def call() -> None:
        try:
            api.request("GET", "/api/v1/nodes")
        except Exception as error:
            raised.append(error)

    caller = threading.Thread(target=call, daemon=True)
    started = clock.monotonic()
    try:
        caller.start()
        caller.join(timeout=10)  # without a bound the call would still be waiting
    finally:
        apiclient.REQUEST_TIMEOUT_SECONDS = saved
        listener.close()
        for connection in accepted:
            connection.close()
    assert not caller.is_alive(), "the call is still waiting on a server that never answers"
    assert len(raised) == 1 and isinstance(raised[0], ReadTimeoutError), raised
    assert clock.monotonic() - started < 5
