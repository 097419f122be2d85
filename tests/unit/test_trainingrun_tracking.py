"""tracking.mlflow on the operator's side: the trainer's environment and the Tracking condition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from azaion_contract.models.trainingrun import TrainingRunSpec
from azaion_operator.config import OperatorConfig
from azaion_operator.trainingrun.builders import build_job
from azaion_operator.trainingrun.lifecycle import decide, tracking_stale

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
META = {"name": "run", "namespace": "ml", "uid": "u-1", "generation": 1}
TRACKED = {"trackingUri": "http://mlflow.ml:5000", "credentialsSecretRef": {"name": "mlflow"}}
RUNNING = {
    "phase": "Running",
    "attempts": 1,
    "image": "img:1",
    "attemptHistory": [{"attempt": 1, "jobName": "run-a1", "outcome": "Running"}],
}
RUNNING_POD = {"metadata": {"name": "run-a1-x"}, "status": {"phase": "Running"}}
JOB = {"metadata": {"name": "run-a1"}, "status": {}}


def spec(**tracking) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate(
        {"model": "yolo26n.yaml", "storage": {"claimName": "data"}, "tracking": {"mlflow": {**TRACKED, **tracking}}}
    )


def tracking_of(decision_status: dict) -> dict | None:
    return next((c for c in decision_status.get("conditions") or [] if c["type"] == "Tracking"), None)


def test_the_trainer_gets_the_server_and_credentials_only_by_reference():
    built = build_job(META, spec(experimentName="detector", logWeights=True), 1, "img:1", OperatorConfig())
    env = {e["name"]: e for e in built["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TRACKING_MLFLOW_URI"]["value"] == "http://mlflow.ml:5000"
    assert env["TRACKING_MLFLOW_EXPERIMENT"]["value"] == "detector"
    assert env["TRACKING_MLFLOW_LOG_WEIGHTS"]["value"] == "true"
    assert "TRACKING_MLFLOW_MODEL_NAME" not in env  # the trainer's default: azaion-<namespace>
    # A Secret may hold a username and password or a token: the keys it lacks are left unset.
    for variable, key in (
        ("MLFLOW_TRACKING_USERNAME", "username"),
        ("MLFLOW_TRACKING_PASSWORD", "password"),
        ("MLFLOW_TRACKING_TOKEN", "token"),
    ):
        assert env[variable] == {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": key, "optional": True}},
        }


def test_a_run_without_tracking_gets_no_tracking_variables():
    plain = TrainingRunSpec.model_validate({"model": "yolo26n.yaml", "storage": {"claimName": "data"}})
    built = build_job(META, plain, 1, "img:1", OperatorConfig())
    names = {e["name"] for e in built["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in names if "MLFLOW" in n}


@pytest.mark.parametrize(
    "names",
    [{"experimentName": "a/b"}, {"registeredModelName": ":x"}, {"trackingUri": "ftp://mlflow"}],
)
def test_names_mlflow_cannot_hold_and_other_schemes_are_refused(names):
    with pytest.raises(ValueError):
        spec(**names)


def test_a_server_that_does_not_answer_shows_as_a_false_condition_while_the_run_goes_on():
    status = {**RUNNING, "mlflow": {"state": "Retrying", "pending": 7, "lastError": "ConnectionError: refused"}}
    assert tracking_stale(status)
    decision = decide(META, spec(), status, JOB, [RUNNING_POD], NOW, "img")
    assert decision.status["phase"] == "Running"
    shown = tracking_of(decision.status)
    assert shown["status"] == "False" and shown["reason"] == "TrackingServerUnavailable"
    assert "ConnectionError: refused" in shown["message"] and "training goes on" in shown["message"]
    progressing = next(c for c in decision.status["conditions"] if c["type"] == "Progressing")
    assert progressing["status"] == "True"
    # Once shown, the same report asks for no reconcile.
    assert not tracking_stale({**status, "conditions": decision.status["conditions"]})


def test_the_last_report_after_the_run_finished_still_reaches_the_condition():
    finished = {
        "phase": "Succeeded",
        "conditions": [
            {"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "", "lastTransitionTime": "t0"}
        ],
        "mlflow": {"state": "Logged", "runId": "r1", "modelVersion": "3"},
    }
    decision = decide(META, spec(), finished, None, [], NOW, "img")
    assert [c["type"] for c in decision.status["conditions"]] == ["Succeeded", "Tracking"]
    shown = tracking_of(decision.status)
    assert shown["status"] == "True" and shown["reason"] == "Logged" and "version 3" in shown["message"]
    assert "phase" not in decision.status  # a finished run stays as it was


def test_a_run_without_mlflow_reports_has_no_tracking_condition():
    decision = decide(META, spec(), RUNNING, JOB, [RUNNING_POD], NOW, "img")
    assert tracking_of(decision.status) is None
    assert not tracking_stale(RUNNING)


def test_a_run_that_published_nothing_is_logged_without_a_model_version():
    status = {**RUNNING, "mlflow": {"state": "Logged", "runId": "r2"}}
    shown = tracking_of(decide(META, spec(), status, JOB, [RUNNING_POD], NOW, "img").status)
    assert shown["status"] == "True" and shown["reason"] == "Logged"
    assert shown["message"] == "logged to MLflow run r2"
