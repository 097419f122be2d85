"""Status is written through the contract's models: camelCase out, typos refused."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from azaion_contract.models.annotationconsumer import AnnotationConsumerStatus
from azaion_contract.models.trainingrun import Artifacts, DatasetArtifact, Metrics, TrainingRunStatus
from azaion_contract.timefmt import parse_rfc3339
from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.queue.quarantine import _iso
from azaion_workloads.queue.state import ConsumerState
from azaion_workloads.status import FileStatusReporter, build, patch
from azaion_workloads.training.progress import Progress, StopFlag

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (Artifacts, {"onnx_sha256": "x", "onnx_sha": "typo"}),
        (Artifacts, {"modelSha256": "a camelCase wire name is not a field name"}),
        (DatasetArtifact, {"manifest_sha": "typo"}),
        (AnnotationConsumerStatus, {"messages_procesed": 1}),
    ],
)
def test_an_unknown_field_name_is_an_error(model: type, fields: dict[str, object]) -> None:
    # The models themselves ignore unknown keys (for reading other writers' fields) ...
    assert model.model_validate(fields) is not None
    # ... but writing goes through build(), which refuses them.
    with pytest.raises(TypeError, match="has no field"):
        build(model, **fields)


def test_progress_reports_refuse_typos_before_sending(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    progress = Progress(FileStatusReporter(status), Heartbeat(tmp_path / "hb"), StopFlag())
    with pytest.raises(TypeError, match="etaSeconds"):
        progress.step("training", etaSeconds=3)
    with pytest.raises(TypeError, match="model_sha"):
        progress.artifacts(model_sha="x")
    assert not status.exists()  # nothing half-reported
    progress.step("training", epoch=1)  # the refused fields were not kept either
    assert set(json.loads(status.read_text())["progress"]) == {"step", "epoch", "updatedAt"}


def test_training_status_wire_format(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    progress = Progress(FileStatusReporter(status), Heartbeat(tmp_path / "hb"), StopFlag())
    progress.step(
        "training",
        epoch=2,
        epochs=10,
        percent=20.0,
        eta_seconds=80,
        metrics=build(Metrics, map50=0.5, map50_95=0.25, box_loss=1.5),
        best_epoch=2,
    )
    progress.step("export")
    progress.checkpoint(epoch=2, path="models/ns/run/checkpoints/epoch-0002.pt", sha256="c", saved_at="T")
    progress.artifacts(onnx="models/ns/run/artifacts/azaion.onnx", onnx_sha256="o")
    progress.artifacts(tensorrt="models/ns/run/artifacts/a.engine", tensorrt_sha256="t", tensorrt_uri="s3://b/k")
    document = json.loads(status.read_text())
    updated_at = document["progress"].pop("updatedAt")
    assert updated_at.endswith("Z") and len(updated_at) == len("2026-01-31T12:00:00Z")
    assert document == {
        "progress": {
            "step": "export",  # the step changes; what training reported stays
            "epoch": 2,
            "epochs": 10,
            "percent": 20.0,
            "etaSeconds": 80,
            "metrics": {"map50": 0.5, "map50_95": 0.25, "boxLoss": 1.5},
            "bestEpoch": 2,
        },
        "lastCheckpoint": {
            "epoch": 2,
            "path": "models/ns/run/checkpoints/epoch-0002.pt",
            "sha256": "c",
            "savedAt": "T",
        },
        "artifacts": {
            "onnx": "models/ns/run/artifacts/azaion.onnx",
            "onnxSha256": "o",
            "tensorrt": "models/ns/run/artifacts/a.engine",
            "tensorrtSha256": "t",
            "tensorrtUri": "s3://b/k",
        },
    }


def test_a_patch_holds_only_the_keys_that_were_set() -> None:
    # A merge patch: a key sent as null would delete what another report wrote.
    assert patch(build(TrainingRunStatus, artifacts=build(Artifacts, promoted=True))) == {
        "artifacts": {"promoted": True}
    }


def test_consumer_status_fields_keep_their_wire_names() -> None:
    state = ConsumerState(
        connected=True,
        processed_offset=7,
        messages_processed=8,
        disk_percent=12.345,
        last_message_time=dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=dt.UTC),
    )
    fields = state.status_fields()
    reported_at = fields.pop("reportedAt")
    assert len(reported_at) == len("2026-01-31T12:00:00.000Z") and parse_rfc3339(reported_at).tzinfo
    assert fields == {
        "offset": 7,
        "messagesProcessed": 8,
        "messagesQuarantined": 0,
        "lastMessageTime": "2026-01-31T12:00:00.123Z",
        "diskUsagePercent": 12.35,
        "connected": True,
    }


def test_quarantine_broker_times() -> None:
    assert _iso(None) is None and _iso(0) is None
    assert _iso(1_747_000_000_000) == "2025-05-11T21:46:40Z"
    assert _iso(1_747_000_000_123) == "2025-05-11T21:46:40.123Z"


def test_a_field_named_model_is_a_field_like_any_other() -> None:
    # Artifacts.model (the best weights) must not collide with build()'s own parameter.
    assert patch(build(Artifacts, model="models/ns/run/weights/best.pt")) == {"model": "models/ns/run/weights/best.pt"}
