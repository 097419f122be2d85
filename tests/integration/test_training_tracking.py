"""MLflow tracking of a real (tiny, CPU) training run, against a real MLflow server on loopback.

The trainer runs as the pod would run it (the CLI, a network guard that lets
it reach only the S3 and MLflow servers); MLflow is read back through its own
client, S3 through boto3.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from azaion_devtools.processes import free_port
from tests.fixtures.mlflow import QUIET, MlflowServer
from tests.fixtures.s3 import S3Server
from tests.integration.test_training_run import Run, _dataset

pytestmark = pytest.mark.integration


def _published_run(tmp_path: Path, s3_server: S3Server, name: str, **extra: str) -> tuple[Run, str]:
    if not s3_server.started:
        pytest.skip("the network guard can only allow a local S3 server")
    bucket = s3_server.new_bucket()
    (tmp_path / "key").write_text(os.urandom(32).hex())
    allowed = [s3_server.endpoint.removeprefix("http://"), *extra.pop("allow", "").split(",")]
    run = Run(
        tmp_path,
        name,
        **s3_server.env(),
        **QUIET,
        S3_BUCKET=bucket,
        ENCRYPTION_KEY_FILE=str(tmp_path / "key"),
        TRAINING_EXTRA_ARGS="{}",  # plots on: results.png is drawn
        NETGUARD_ALLOW=",".join(a for a in allowed if a),
        **extra,
    )
    _dataset(run.root)
    return run, bucket


def test_a_run_logs_epochs_artifacts_and_registers_its_published_model(
    tmp_path: Path, s3_server: S3Server, mlflow_server: MlflowServer
) -> None:
    experiment = f"exp-{os.urandom(4).hex()}"
    run, bucket = _published_run(
        tmp_path,
        s3_server,
        "tracked",
        allow=mlflow_server.host,
        TRACKING_MLFLOW_URI=mlflow_server.uri,
        TRACKING_MLFLOW_EXPERIMENT=experiment,
        TRACKING_MLFLOW_MODEL_NAME=f"model-{experiment}",
    )
    code, log = run.run("run-1.log")
    assert code == 0, log[-4000:]
    assert run.network_attempts() == "", "the run tried to reach something but the S3 and MLflow servers"

    status = run.status()
    tracked = status["mlflow"]
    assert tracked["state"] == "Logged", tracked
    assert tracked["pending"] == 0 and tracked["modelVersion"] == "1"

    client = mlflow_server.client()
    mlrun = client.get_run(tracked["runId"])
    assert mlrun.info.run_name == "local/tracked" and mlrun.info.status == "FINISHED"
    assert mlrun.info.experiment_id == tracked["experimentId"]
    assert client.get_experiment_by_name(experiment).experiment_id == tracked["experimentId"]
    params = mlrun.data.params
    assert params["epochs"] == "2" and params["imgsz"] == "64" and params["model"] == "yolo26n.yaml"
    assert params["dataset.manifest_sha256"] == status["artifacts"]["dataset"]["manifestSha256"]
    assert int(params["dataset.train"]) == status["artifacts"]["dataset"]["train"]
    # One point per epoch, at its epoch number, equal to what status showed for the last one.
    history = client.get_metric_history(tracked["runId"], "map50_95")
    assert [point.step for point in history] == [1, 2]
    assert history[-1].value == pytest.approx(status["progress"]["metrics"]["map50_95"], abs=1e-6)
    assert [p.step for p in client.get_metric_history(tracked["runId"], "box_loss")] == [1, 2]

    logged = {a.path for a in client.list_artifacts(tracked["runId"])}
    assert {"results.csv", "results.png", "model", "dataset"} <= logged
    assert [a.path for a in client.list_artifacts(tracked["runId"], "model")] == ["model/azaion.onnx"]
    everything = [a.path for path in logged for a in client.list_artifacts(tracked["runId"], path)] + list(logged)
    assert not any(p.endswith(".pt") for p in everything), "unencrypted weights were sent without logWeights"
    downloaded = Path(client.download_artifacts(tracked["runId"], "results.csv", str(tmp_path / "dl")))
    assert downloaded.read_bytes() == (run.run_dir / "results.csv").read_bytes()

    # The registered version points at the published, encrypted model.
    (version,) = client.search_model_versions(f"name='model-{experiment}'")
    artifacts = status["artifacts"]
    assert version.source == artifacts["publishedUris"][0]
    assert version.run_id == tracked["runId"]
    assert version.tags["manifest"] == artifacts["manifestUri"]

    # The curves are published beside the model, their URIs in status.
    s3 = s3_server.client()
    for name, uri in (("results.csv", artifacts["resultsCsvUri"]), ("results.png", artifacts["resultsPngUri"])):
        assert uri == f"s3://{bucket}/models/runs/local/tracked/{name}"
        body = s3.get_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"))["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256((run.run_dir / name).read_bytes()).digest()
        assert uri in artifacts["publishedUris"]

    # A retry after success logs into the same MLflow run and registers nothing new.
    code, log = run.run("run-2.log")
    assert code == 0, log[-4000:]
    assert run.status()["mlflow"]["runId"] == tracked["runId"]
    assert len(client.search_model_versions(f"name='model-{experiment}'")) == 1
    assert len(client.search_runs([tracked["experimentId"]])) == 1


def test_a_run_that_publishes_nothing_is_logged_and_its_mlflow_run_ended(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    experiment = f"exp-{os.urandom(4).hex()}"
    run = Run(
        tmp_path,
        "local-only",
        **QUIET,
        TRACKING_MLFLOW_URI=mlflow_server.uri,
        TRACKING_MLFLOW_EXPERIMENT=experiment,
        EXPORT_ONNX="false",
        NETGUARD_ALLOW=mlflow_server.host,
    )
    _dataset(run.root)
    code, log = run.run("run.log")
    assert code == 0, log[-4000:]
    assert run.network_attempts() == ""
    tracked = run.status()["mlflow"]
    assert tracked["state"] == "Logged" and tracked["pending"] == 0
    assert "modelVersion" not in tracked
    mlrun = mlflow_server.client().get_run(tracked["runId"])
    assert mlrun.info.status == "FINISHED"
    assert [p.step for p in mlflow_server.client().get_metric_history(tracked["runId"], "box_loss")] == [1, 2]


def test_a_tracking_server_that_is_down_leaves_training_unaffected(tmp_path: Path, s3_server: S3Server) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there: every request is refused
    run, bucket = _published_run(tmp_path, s3_server, "untracked", allow=nobody, TRACKING_MLFLOW_URI=f"http://{nobody}")
    code, log = run.run("run.log", timeout=300)
    assert code == 0, log[-4000:]
    assert run.network_attempts() == ""

    status = run.status()
    assert status["progress"]["step"] == "done" and status["progress"]["epoch"] == 2
    assert status["artifacts"]["manifestUri"].startswith(f"s3://{bucket}/")
    assert run.results_epochs() == [1, 2]
    tracked = status["mlflow"]
    assert tracked["state"] == "Retrying"
    assert tracked["pending"] > 0 and tracked["failures"] > 0
    assert "Connection refused" in tracked["lastError"] or "NewConnectionError" in tracked["lastError"]
    assert "runId" not in tracked
