"""The pipeline orders the steps and reports their results; each step builds its own result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.status import FileStatusReporter
from azaion_workloads.training import crypto
from azaion_workloads.training.config import TrainingSettings, load_settings
from azaion_workloads.training.export import ExportResult
from azaion_workloads.training.pipeline import (
    ENCRYPT_DONE,
    ENCRYPT_ENGINE_DONE,
    DatasetResult,
    EncryptResult,
    Pipeline,
    PromoteResult,
    PublishResult,
)
from azaion_workloads.training.progress import Progress, StopFlag
from azaion_workloads.training.train import TrainingResult

pytestmark = pytest.mark.unit


class StubbedSteps(Pipeline):
    """Every step returns a canned result (no dataset, torch or S3): only run()'s ordering and reporting run."""

    def __init__(self, settings: TrainingSettings, progress: Progress) -> None:
        super().__init__(settings, progress)
        self.calls: list[str] = []
        self.artifacts_dir = settings.run_dir / "artifacts"

    def dataset(self) -> DatasetResult:
        self.calls.append("dataset")
        directory = self.settings.dataset_dir
        return DatasetResult(directory, directory / "data.yaml", 7, 2, 1, 3, "manifest-sha")

    def train(self, data_yaml: Path) -> TrainingResult:
        self.calls.append(f"train {data_yaml.name}")
        return TrainingResult(self.run_dir / "weights" / "best.pt", "pt-sha", 4, {"map50": 0.5})

    def export(self, trained: TrainingResult) -> ExportResult:
        self.calls.append(f"export {trained.sha256}")
        return ExportResult(self.artifacts_dir / "a.onnx", "onnx-sha", self.artifacts_dir / "a.engine", "engine-sha")

    def encrypt(
        self, source: Path, source_sha: str, key: bytes, key_id: str, *, done_name: str = ENCRYPT_DONE
    ) -> EncryptResult:
        self.calls.append(f"encrypt {source.name} {done_name}")
        encrypted = self.rel(self.artifacts_dir / f"{source.name}.enc")
        return EncryptResult(
            source=self.rel(source),
            source_sha256=source_sha,
            encrypted=encrypted,
            sha256=f"{source.name}-enc-sha",
            size=10,
            key_id=key_id,
        )

    def publish(self, model: EncryptResult, trained: TrainingResult, *rest: Any, **options: Any) -> PublishResult:
        (dataset,), engine = rest, options["engine"]  # what run() passes: the dataset, and the engine by name
        self.calls.append(f"publish {Path(model.encrypted).name} {Path(engine.encrypted).name} {dataset.train}")
        return PublishResult("s3://b/manifest.json", ("s3://b/model", "s3://b/engine"), "s3://b/engine")

    def promote(self, trained: TrainingResult, published: PublishResult | None = None) -> PromoteResult:
        assert published is not None
        self.calls.append(f"promote {published.manifest_uri}")
        return PromoteResult(self.settings.layout.current_model, "s3://b/current.json")


def test_run_orders_the_steps_and_reports_each_result(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "key").write_bytes(os.urandom(32).hex().encode())
    settings = load_settings(
        {
            "AZAION_ROOT_DIR": str(root),
            "AZAION_RESOURCE_NAME": "run-1",
            "S3_BUCKET": "b",
            "ENCRYPTION_KEY_FILE": str(tmp_path / "key"),
            "ENCRYPTION_KEY_ID": "key-1",
            "EXPORT_TENSORRT": "true",
            "PUBLISH_PROMOTE": "true",
        }
    )
    status_file = tmp_path / "status.json"
    pipeline = StubbedSteps(settings, Progress(FileStatusReporter(status_file), Heartbeat(tmp_path / "hb"), StopFlag()))

    pipeline.run()

    assert pipeline.calls == [
        "dataset",
        "train data.yaml",
        "export pt-sha",
        f"encrypt a.onnx {ENCRYPT_DONE}",
        f"encrypt a.engine {ENCRYPT_ENGINE_DONE}",
        "publish a.onnx.enc a.engine.enc 7",
        "promote s3://b/manifest.json",
    ]
    status = json.loads(status_file.read_text())
    assert status["progress"]["step"] == "done"
    run = "models/local/run-1"
    assert status["artifacts"] == {
        "dataset": {
            "path": "datasets/local/run-1",
            "train": 7,
            "valid": 2,
            "test": 1,
            "corrupted": 3,
            "manifestSha256": "manifest-sha",
        },
        "model": f"{run}/weights/best.pt",
        "modelSha256": "pt-sha",
        "onnx": f"{run}/artifacts/a.onnx",
        "onnxSha256": "onnx-sha",
        "tensorrt": f"{run}/artifacts/a.engine",
        "tensorrtSha256": "engine-sha",
        # The model's encryption: the engine's is not reported over it.
        "encrypted": f"{run}/artifacts/a.onnx.enc",
        "encryptedSha256": "a.onnx-enc-sha",
        "tensorrtUri": "s3://b/engine",
        "manifestUri": "s3://b/manifest.json",
        "publishedUris": ["s3://b/model", "s3://b/engine", "s3://b/manifest.json"],
        "promoted": True,
    }


def _pipeline(tmp_path: Path, **env: str) -> tuple[Pipeline, Path]:
    root = tmp_path / "root"
    settings = load_settings({"AZAION_ROOT_DIR": str(root), "AZAION_RESOURCE_NAME": "run-1", **env})
    status_file = tmp_path / "status.json"
    progress = Progress(FileStatusReporter(status_file), Heartbeat(tmp_path / "hb"), StopFlag())
    return Pipeline(settings, progress), status_file


def test_a_step_returns_its_result_and_reports_nothing(tmp_path: Path) -> None:
    pipeline, status_file = _pipeline(tmp_path)
    source = pipeline.run_dir / "artifacts" / "azaion.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes(os.urandom(3000))
    key = os.urandom(32)

    record = pipeline.encrypt(source, "plain-sha", key, "key-1")

    assert record.encrypted == "models/local/run-1/artifacts/azaion.onnx.enc"
    assert record.source == "models/local/run-1/artifacts/azaion.onnx" and record.source_sha256 == "plain-sha"
    assert record.size == (pipeline.root / record.encrypted).stat().st_size and record.key_id == "key-1"
    assert "artifacts" not in json.loads(status_file.read_text())  # only the step's progress went out
    # A second call finds its record and keeps the file (encrypting again would change it).
    assert pipeline.encrypt(source, "plain-sha", key, "key-1") == record
    assert pipeline.encrypt(source, "plain-sha", key, "key-2") != record  # another key: done again

    pipeline.report(record)
    assert json.loads(status_file.read_text())["artifacts"] == {
        "encrypted": record.encrypted,
        "encryptedSha256": record.sha256,
    }


def test_the_encryption_record_file_keeps_its_format(tmp_path: Path) -> None:
    # What encrypt.json held before the step's result was a model: a run directory
    # from an earlier image must still be found done, and be written the same way.
    written = {
        "source": "models/local/run-1/artifacts/azaion.onnx",
        "sourceSha256": "s",
        "encrypted": "models/local/run-1/artifacts/azaion.onnx.enc",
        "sha256": "e",
        "size": 123,
        "keyId": "key-1",
        "format": {"algorithm": "AES-256-GCM", "version": crypto.VERSION},
    }
    path = tmp_path / ENCRYPT_DONE
    path.write_bytes(json.dumps(written, indent=2).encode())
    record = EncryptResult.read(path)
    assert record is not None and record.source_sha256 == "s" and record.key_id == "key-1"
    assert record.dump() == path.read_bytes()
    path.write_text("{not json")
    assert EncryptResult.read(path) is None
    assert EncryptResult.read(tmp_path / "missing.json") is None


def test_results_leave_out_what_they_did_not_produce(tmp_path: Path) -> None:
    root = tmp_path
    onnx_only = ExportResult(root / "a.onnx", "o").artifacts(root)
    assert onnx_only.model_fields_set == {"onnx", "onnx_sha256"}  # no null tensorrt keys in the merge patch
    published: dict[str, Any] = PublishResult("s3://b/m", ("s3://b/x",)).artifacts(root).model_dump(exclude_unset=True)
    assert published == {"manifest_uri": "s3://b/m", "published_uris": ["s3://b/x", "s3://b/m"]}
