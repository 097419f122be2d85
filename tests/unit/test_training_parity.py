"""The export parity gate: its settings, its decision, its records, and the pipeline refusing to publish."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.status import FileStatusReporter, patch
from azaion_workloads.training import parity
from azaion_workloads.training.config import EnvError, TrainingSettings, load_settings
from azaion_workloads.training.errors import PermanentError
from azaion_workloads.training.export import ExportResult
from azaion_workloads.training.parity import ParityCheck, within_tolerance
from azaion_workloads.training.pipeline import EncryptResult, Pipeline
from azaion_workloads.training.progress import Progress, StopFlag
from azaion_workloads.training.train import TrainingResult
from tests.unit.test_training_pipeline import StubbedSteps

pytestmark = pytest.mark.unit


def _env(root: Path, **extra: str) -> dict[str, str]:
    return {"AZAION_ROOT_DIR": str(root), "AZAION_RESOURCE_NAME": "run-1", **extra}


def _progress(tmp_path: Path) -> tuple[Progress, Path]:
    status_file = tmp_path / "status.json"
    return Progress(FileStatusReporter(status_file), Heartbeat(tmp_path / "hb"), StopFlag()), status_file


# Settings ---------------------------------------------------------------


def test_parity_defaults(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    assert settings.onnx_parity is True
    assert settings.onnx_parity_tolerance == 0.01
    assert settings.onnx_parity_max_images == 1000


def test_parity_settings_are_parsed(tmp_path: Path) -> None:
    settings = load_settings(
        _env(
            tmp_path,
            EXPORT_ONNX_PARITY="false",
            EXPORT_ONNX_PARITY_TOLERANCE="0.05",
            EXPORT_ONNX_PARITY_MAX_IMAGES="30",
        )
    )
    assert (settings.onnx_parity, settings.onnx_parity_tolerance, settings.onnx_parity_max_images) == (False, 0.05, 30)


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("EXPORT_ONNX_PARITY", "maybe", "not a boolean"),
        ("EXPORT_ONNX_PARITY_TOLERANCE", "a lot", "could not convert"),
        ("EXPORT_ONNX_PARITY_TOLERANCE", "1.5", "less than or equal to 1"),
        ("EXPORT_ONNX_PARITY_TOLERANCE", "-0.01", "greater than or equal to 0"),
        ("EXPORT_ONNX_PARITY_TOLERANCE", "nan", "finite"),
        ("EXPORT_ONNX_PARITY_MAX_IMAGES", "0", "greater than or equal to 1"),
        ("EXPORT_ONNX_PARITY_MAX_IMAGES", "ten", "invalid literal"),
    ],
)
def test_bad_parity_settings_name_the_variable(tmp_path: Path, variable: str, value: str, reason: str) -> None:
    with pytest.raises(EnvError) as refused:
        load_settings(_env(tmp_path, **{variable: value}))
    (line,) = [line for line in str(refused.value).splitlines() if line.strip().startswith("- ")]
    assert line.strip().startswith(f"- {variable}: "), str(refused.value)
    assert reason in line


# The decision -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pt", "onnx", "tolerance", "passed"),
    [
        (0.5, 0.5, 0.01, True),
        (0.5, 0.49, 0.01, True),  # exactly the tolerance: allowed, whatever 0.5 - 0.49 is in binary
        (0.5, 0.4899, 0.01, False),
        (0.5, 0.6, 0.0, True),  # better than the .pt
        (0.5, 0.499999, 0.0, False),
        (0.3, 0.0, 0.3, True),
        (0.3, 0.0, 0.29, False),
    ],
)
def test_within_tolerance(pt: float, onnx: float, tolerance: float, passed: bool) -> None:
    assert within_tolerance(pt, onnx, tolerance) is passed
    assert ParityCheck(tolerance, 40, pt, onnx).passed is passed


def test_a_refusal_names_both_figures_the_tolerance_and_the_images() -> None:
    refused = ParityCheck(0.01, 40, pt_map50_95=0.515627, onnx_map50_95=0.074998)
    assert refused.refusal() == (
        "EXPORT_PARITY: ONNX mAP50-95 0.0750 is more than 0.01 below the .pt's 0.5156 on 40 validation images"
    )
    assert ParityCheck(0.01, 40, 0.5, 0.495).refusal() is None


def test_the_status_and_the_record_of_a_check() -> None:
    check = ParityCheck(0.01, 40, 0.5, 0.45)
    assert patch(check.status()) == {
        "ptMap50_95": 0.5,
        "onnxMap50_95": 0.45,
        "tolerance": 0.01,
        "images": 40,
        "passed": False,
    }
    assert check.document() == {
        "ptMap50_95": 0.5,
        "onnxMap50_95": 0.45,
        "tolerance": 0.01,
        "images": 40,
        "passed": False,
        "skipped": None,
    }


def test_a_skipped_gate_neither_passes_nor_refuses() -> None:
    skipped = ParityCheck(0.01, 0, skipped=parity.NO_VALIDATION_IMAGES)
    assert skipped.passed is None and skipped.refusal() is None
    # No null in the merge patch: it would delete keys instead of saying "unknown".
    assert patch(skipped.status()) == {"tolerance": 0.01, "images": 0, "skipped": "no validation images"}
    assert skipped.document()["passed"] is None


# The subset and the evaluation record ----------------------------------


def _dataset(settings: TrainingSettings, names: list[str]) -> Path:
    """A formed dataset with ``names`` as its validation images (and a label for each but the last)."""
    directory = settings.dataset_dir
    for sub in ("valid/images", "valid/labels", "train/images"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (directory / "valid/images" / name).write_bytes(b"image " + name.encode())
        if index < len(names) - 1:
            (directory / "valid/labels" / f"{Path(name).stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    document = {"path": str(directory), "train": "train/images", "val": "valid/images", "test": "test/images"}
    (directory / "data.yaml").write_text(yaml.safe_dump({**document, "nc": 2, "names": {0: "a", 1: "b"}}))
    return directory / "data.yaml"


def test_the_subset_is_the_first_images_by_name_inside_the_run_dir(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path))
    data_yaml = _dataset(settings, ["c.jpg", "a.png", "b.JPG", "d.jpg", ".hidden.jpg", "notes.txt"])
    images = parity.validation_images(data_yaml)
    assert [p.name for p in images] == ["a.png", "b.JPG", "c.jpg", "d.jpg"]

    target = settings.run_dir / parity.PARITY_DIR / "data"
    (target / "images").mkdir(parents=True)
    (target / "images" / "stale.jpg").write_bytes(b"from an earlier try")
    subset_yaml = parity.subset(data_yaml, images[:3], target)

    assert subset_yaml.parent == target and settings.run_dir in subset_yaml.parents
    assert sorted(p.name for p in (target / "images").iterdir()) == ["a.png", "b.JPG", "c.jpg"]
    assert sorted(p.name for p in (target / "labels").iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert (target / "images" / "a.png").read_bytes() == b"image a.png"
    document = yaml.safe_load(subset_yaml.read_text())
    assert (document["path"], document["train"], document["val"]) == (str(target), "images", "images")
    assert "test" not in document and document["names"] == {0: "a", 1: "b"}


def _fake_evaluations(monkeypatch: pytest.MonkeyPatch, figures: dict[str, float]) -> list[tuple[str, int, str]]:
    """Replace the two ultralytics evaluations by ``figures`` (by file suffix); return the calls made."""
    calls: list[tuple[str, int, str]] = []

    def evaluate(model_file: Path, data: Path, imgsz: int, batch: int, device: str, *_rest: Any) -> float:
        assert data.is_file()
        calls.append((model_file.suffix, imgsz, device))
        return figures[model_file.suffix]

    monkeypatch.setattr(parity, "_evaluate", evaluate)
    return calls


def test_check_evaluates_once_and_rejudges_a_record_with_a_new_tolerance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(_env(tmp_path, TRAINING_IMGSZ="640", EXPORT_ONNX_IMGSZ="320", TRAINING_DEVICE="cpu"))
    _dataset(settings, [f"img-{i}.jpg" for i in range(5)])
    progress, _ = _progress(tmp_path)
    calls = _fake_evaluations(monkeypatch, {".pt": 0.5, ".onnx": 0.47})
    best, onnx = tmp_path / "best.pt", tmp_path / "azaion.onnx"

    checked, record = parity.check(settings, best, "pt-sha", onnx, "onnx-sha", progress)
    assert calls == [(".pt", 640, "cpu"), (".onnx", 320, "cpu")]  # each at its own size
    assert checked == ParityCheck(0.01, 5, 0.5, 0.47) and checked.passed is False
    assert record["inputs"]["ptSha256"] == "pt-sha" and record["inputs"]["onnxSha256"] == "onnx-sha"

    # The same inputs: the figures are reused; a wider tolerance passes them.
    wider = settings.model_copy(update={"onnx_parity_tolerance": 0.05})
    again, _ = parity.check(wider, best, "pt-sha", onnx, "onnx-sha", progress, record)
    assert len(calls) == 2
    assert again == ParityCheck(0.05, 5, 0.5, 0.47) and again.passed is True

    # Another ONNX file (or fewer images): evaluated again.
    parity.check(settings, best, "pt-sha", onnx, "other-onnx", progress, record)
    fewer = settings.model_copy(update={"onnx_parity_max_images": 2})
    smaller, _ = parity.check(fewer, best, "pt-sha", onnx, "onnx-sha", progress, record)
    assert len(calls) == 6 and smaller.images == 2


def test_check_without_validation_images_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env(tmp_path))
    _dataset(settings, [])
    calls = _fake_evaluations(monkeypatch, {})
    progress, _ = _progress(tmp_path)
    checked, record = parity.check(settings, tmp_path / "b.pt", "p", tmp_path / "a.onnx", "o", progress)
    assert calls == []
    assert checked == ParityCheck(0.01, 0, skipped="no validation images")
    assert record["passed"] is None and record["skipped"] == "no validation images"


# The pipeline -----------------------------------------------------------


class GatedSteps(StubbedSteps):
    """The stubbed steps with an export whose parity check is ``check``."""

    def __init__(self, settings: TrainingSettings, progress: Progress, check: ParityCheck | None) -> None:
        super().__init__(settings, progress)
        self.check = check

    def export(self, trained: TrainingResult) -> ExportResult:
        self.calls.append("export")
        return ExportResult(self.artifacts_dir / "a.onnx", "onnx-sha", parity=self.check)


def _gated(tmp_path: Path, check: ParityCheck | None) -> tuple[GatedSteps, Path]:
    (tmp_path / "key").write_bytes(os.urandom(32).hex().encode())
    settings = load_settings(
        _env(tmp_path / "root", S3_BUCKET="b", ENCRYPTION_KEY_FILE=str(tmp_path / "key"), PUBLISH_PROMOTE="true")
    )
    progress, status_file = _progress(tmp_path)
    return GatedSteps(settings, progress, check), status_file


def test_a_refused_export_is_reported_and_nothing_is_encrypted_or_published(tmp_path: Path) -> None:
    pipeline, status_file = _gated(tmp_path, ParityCheck(0.01, 40, 0.5156, 0.075))
    with pytest.raises(PermanentError, match=r"^EXPORT_PARITY: ONNX mAP50-95 0\.0750 is more than 0\.01 below"):
        pipeline.run()
    assert pipeline.calls == ["dataset", "train data.yaml", "export"]
    status = json.loads(status_file.read_text())
    assert status["artifacts"]["onnxParity"] == {
        "ptMap50_95": 0.5156,
        "onnxMap50_95": 0.075,
        "tolerance": 0.01,
        "images": 40,
        "passed": False,
    }
    assert "encrypted" not in status["artifacts"] and status.get("progress", {}).get("step") != "done"


@pytest.mark.parametrize(
    "check",
    [ParityCheck(0.01, 40, 0.5, 0.495), ParityCheck(0.01, 0, skipped=parity.NO_VALIDATION_IMAGES), None],
    ids=["passed", "skipped", "off"],
)
def test_an_export_that_passed_or_was_not_checked_goes_on(tmp_path: Path, check: ParityCheck | None) -> None:
    pipeline, status_file = _gated(tmp_path, check)
    publish_parity: list[ParityCheck | None] = []
    stubbed_publish = pipeline.publish

    def publish(model: EncryptResult, trained: TrainingResult, *rest: Any, **options: Any) -> Any:
        publish_parity.append(options.pop("parity"))
        assert options.pop("engine") is None  # no TensorRT here; the stub names the model in its place
        return stubbed_publish(model, trained, *rest, engine=model, **options)

    pipeline.publish = publish  # type: ignore[method-assign]
    pipeline.run()
    assert pipeline.calls[2:4] == ["export", "encrypt a.onnx encrypt.json"]
    assert publish_parity == [check]
    status = json.loads(status_file.read_text())
    assert status["progress"]["step"] == "done"
    assert ("onnxParity" in status["artifacts"]) is (check is not None)


class FakeStore:
    """The few Publisher calls publish() makes, in memory."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}

    def manifest_key(self, namespace: str, name: str) -> str:
        return f"runs/{namespace}/{name}/manifest.json"

    def blob_key(self, sha256: str) -> str:
        return f"blobs/{sha256}"

    def uri(self, key: str) -> str:
        return f"s3://b/{key}"

    def get_json(self, key: str) -> Any:
        return self.documents.get(key)

    def put_json(self, key: str, document: Any) -> None:
        self.documents[key] = json.loads(json.dumps(document))

    def upload_blob(self, path: Path, sha256: str, size: int) -> str:
        return self.blob_key(sha256)


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (
            ParityCheck(0.01, 40, 0.5, 0.495),
            {
                "ptMap50_95": 0.5,
                "onnxMap50_95": 0.495,
                "tolerance": 0.01,
                "images": 40,
                "passed": True,
                "skipped": None,
            },
        ),
        (None, None),
    ],
    ids=["checked", "off"],
)
def test_the_manifest_records_the_parity_check(tmp_path: Path, check: ParityCheck | None, expected: Any) -> None:
    settings = load_settings(_env(tmp_path / "root", S3_BUCKET="b"))
    progress, _ = _progress(tmp_path)
    pipeline = Pipeline(settings, progress)
    store = FakeStore()
    pipeline.__dict__["publisher"] = store  # the cached property, without S3
    encrypted = EncryptResult(
        source="models/local/run-1/artifacts/azaion.onnx",
        source_sha256="plain",
        encrypted="models/local/run-1/artifacts/azaion.onnx.enc",
        sha256="enc",
        size=3,
        key_id="k",
    )
    trained = TrainingResult(settings.run_dir / "weights/best.pt", "pt-sha", 3, {"map50_95": 0.5})
    pipeline.publish(encrypted, trained, parity=check)
    manifest = store.documents["runs/local/run-1/manifest.json"]
    assert manifest["model"].get("parity") == expected
    assert {"source", "epochs", "imgsz", "bestEpoch", "ptSha256"} <= set(manifest["model"])
