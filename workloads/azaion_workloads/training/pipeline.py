"""The steps of one training run, each skipped when its result is already there.

dataset -> training -> export (with its parity gate) -> encrypt -> publish ->
promote. Every step
records what it produced (a manifest or a small JSON file in the run
directory, written atomically after its outputs), so a retry after any crash
continues at the first step whose record is missing or no longer matches.

Each step returns its result as a small typed object that only the step
builds (:class:`DatasetResult`, :class:`~.train.TrainingResult`,
:class:`~.export.ExportResult`, :class:`EncryptResult`, :class:`PublishResult`,
:class:`PromoteResult`); each result says what it adds to
``status.artifacts``. :meth:`Pipeline.run` orders the steps and reports their
results, so what a step does and what status shows stay in one place each.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from azaion_contract.models.trainingrun import Artifacts, DatasetArtifact, TrainingRunStatus
from azaion_contract.timefmt import rfc3339
from azaion_workloads.classes import ClassCatalog
from azaion_workloads.fsutil import atomic_copy, atomic_write_bytes, atomic_writer, sha256_file
from azaion_workloads.status import build
from azaion_workloads.training import crypto
from azaion_workloads.training.config import TrainingSettings
from azaion_workloads.training.dataset import DATA_YAML, MANIFEST, DatasetBuilder
from azaion_workloads.training.errors import PermanentError
from azaion_workloads.training.progress import Progress
from azaion_workloads.training.train import TrainingResult, train

if TYPE_CHECKING:  # numpy (export) and boto3 (publish) are imported only when those steps run
    from azaion_workloads.training.export import ExportResult
    from azaion_workloads.training.mirror import CheckpointMirror
    from azaion_workloads.training.parity import ParityCheck
    from azaion_workloads.training.publish import Publisher
    from azaion_workloads.training.tracking import MlflowTracker

log = logging.getLogger(__name__)

ENCRYPT_DONE = "encrypt.json"
#: The TensorRT engine's encryption record (a separate step result: it may come and go).
ENCRYPT_ENGINE_DONE = "encrypt-engine.json"
PUBLISH_DONE = "publish.json"
#: ultralytics' per-epoch results and its plot of them, published beside the model.
CURVES = {"results.csv": "text/csv", "results.png": "image/png"}
#: How long a stopped or failed attempt waits for MLflow (the next attempt logs on).
TRACKING_STOP_SECONDS = 5.0


class StepResult(Protocol):
    """What a step produced, as status shows it."""

    def artifacts(self, root: Path) -> Artifacts:
        """The ``status.artifacts`` fields of this result (paths relative to the data root ``root``)."""
        ...


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


@dataclass(frozen=True)
class DatasetResult:
    """The formed dataset: its directory, ``data.yaml`` and the counts of its manifest."""

    directory: Path
    data_yaml: Path
    train: int
    valid: int
    test: int
    #: Annotations moved to data-corrupted/ by label validation.
    corrupted: int
    manifest_sha256: str

    def artifacts(self, root: Path) -> Artifacts:
        return build(
            Artifacts,
            dataset=build(
                DatasetArtifact,
                path=_rel(self.directory, root),
                train=self.train,
                valid=self.valid,
                test=self.test,
                corrupted=self.corrupted,
                manifest_sha256=self.manifest_sha256,
            ),
        )


class _Record(BaseModel):
    """A step record kept as JSON in the run directory: camelCase keys, as it always was."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class EncryptionFormat(_Record):
    """How the file was encrypted (see :mod:`.crypto`)."""

    algorithm: str = "AES-256-GCM"
    version: int = crypto.VERSION


class EncryptResult(_Record):
    """One encrypted file: the content of its record (``encrypt.json`` for the model).

    Paths are relative to the data root, as in the record file.
    """

    source: str
    source_sha256: str
    encrypted: str
    sha256: str
    size: int
    key_id: str
    format: EncryptionFormat = Field(default_factory=EncryptionFormat)

    def artifacts(self, root: Path) -> Artifacts:
        return build(Artifacts, encrypted=self.encrypted, encrypted_sha256=self.sha256)

    def dump(self) -> bytes:
        """The record file's bytes (``json.dumps`` with indent 2, as before these were models)."""
        return json.dumps(self.model_dump(by_alias=True, mode="json"), indent=2).encode()

    @classmethod
    def read(cls, path: Path) -> EncryptResult | None:
        """The record in ``path``, or None when it is missing or unreadable (then the step runs)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None


@dataclass(frozen=True)
class PublishResult:
    """Where the run's objects went: the manifest and the S3 copies of its artifacts."""

    manifest_uri: str
    #: The artifacts' S3 URIs (the big parts in split mode), the model's first; the manifest's not among them.
    artifact_uris: tuple[str, ...]
    #: The engine's S3 URI, when an engine was published.
    tensorrt_uri: str | None = None
    #: The published training curves (:data:`CURVES`) by file name.
    curve_uris: dict[str, str] = field(default_factory=dict)

    def artifacts(self, root: Path) -> Artifacts:
        fields: dict[str, Any] = {"manifest_uri": self.manifest_uri}
        fields["published_uris"] = [*self.artifact_uris, *self.curve_uris.values(), self.manifest_uri]
        # Left out, not null, when absent: a merge patch would delete them.
        if self.tensorrt_uri is not None:
            fields["tensorrt_uri"] = self.tensorrt_uri
        if "results.csv" in self.curve_uris:
            fields["results_csv_uri"] = self.curve_uris["results.csv"]
        if "results.png" in self.curve_uris:
            fields["results_png_uri"] = self.curve_uris["results.png"]
        return build(Artifacts, **fields)


@dataclass(frozen=True)
class PromoteResult:
    """The promoted model: the local current model and, when published, the store's pointer."""

    current: Path
    #: ``current.json`` in the store, or None when nothing was published.
    pointer_uri: str | None = None

    def artifacts(self, root: Path) -> Artifacts:
        return build(Artifacts, promoted=True)


def load_key(settings: TrainingSettings) -> tuple[bytes, str] | None:
    """The encryption key and its id, or None when encryption is off.

    Publishing never sends an unencrypted model, so with ``S3_BUCKET`` set (or
    an explicit ``ENCRYPTION_KEY_FILE``) a missing or bad key is a permanent
    error, found before any training time is spent.
    """
    needed = settings.publishing or settings.key_file_explicit
    if not needed and not settings.key_file.exists():
        log.info("no encryption key at %s and nothing to publish: not encrypting", settings.key_file)
        return None
    try:
        key = crypto.load_key(settings.key_file)
    except crypto.CryptoError as error:
        raise PermanentError(f"ENCRYPTION_KEY_FILE: {error}") from None
    return key, settings.key_id or crypto.key_fingerprint(key)


class Pipeline:
    """The steps of one run (its methods) and :meth:`run`, which orders them and reports their results."""

    def __init__(self, settings: TrainingSettings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.root = settings.layout.root
        self.run_dir = settings.run_dir

    def rel(self, path: Path) -> str:
        return _rel(path, self.root)

    def report(self, result: StepResult) -> None:
        """Report one step's result in ``status.artifacts`` (steps report progress, never results)."""
        self.progress.report(build(TrainingRunStatus, artifacts=result.artifacts(self.root)))

    @cached_property
    def publisher(self) -> Publisher:
        """The S3 store, made once: publishing and promotion talk to it through one client."""
        from azaion_workloads.training.publish import Publisher, S3Target

        settings = self.settings
        assert settings.s3_bucket is not None
        return Publisher(
            S3Target(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint, settings.s3_region),
            on_progress=self.progress.beat,
        )

    @cached_property
    def tracker(self) -> MlflowTracker | None:
        """The run's MLflow tracker (``TRACKING_MLFLOW_URI``), made once the run directory exists."""
        settings = self.settings
        if not settings.mlflow_uri:
            return None
        from azaion_workloads.training.tracking import MlflowTracker

        return MlflowTracker(
            settings.mlflow_uri,
            settings.mlflow_experiment,
            f"{settings.resource_namespace}/{settings.resource_name}",
            settings.registered_model_name,
            self.run_dir,
            on_status=self.progress.mlflow,
        )

    # Steps ---------------------------------------------------------------

    def run(self) -> None:
        """Every step in order, each result reported as soon as it is there.

        A step whose record still matches returns that record without redoing
        the work, so a retry runs only the steps a crash left unfinished.
        MLflow is told the run finished only when it did, failed only when no
        retry can help; a stopped attempt's MLflow run goes on in the next one.
        """
        try:
            self._steps()
        except BaseException as error:
            if self.tracker is not None:
                if isinstance(error, PermanentError):
                    self.tracker.finish("FAILED")
                self.tracker.close(TRACKING_STOP_SECONDS)
            raise
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker.close()

    def _steps(self) -> None:
        settings = self.settings
        key = load_key(settings)
        if settings.model.endswith(".pt") and not Path(settings.model_source()).is_file():
            origin = (
                f"TRAINING_FROM_RUN: run {settings.from_run} has no best weights"
                if settings.from_run
                else "TRAINING_MODEL"
            )
            raise PermanentError(f"{origin}: {settings.model} does not exist in the data root")
        settings.layout.ensure()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dataset = self.dataset()
        self.report(dataset)
        self.track_parameters(dataset)
        self.progress.stop.check("after dataset formation")
        trained = self.train(dataset.data_yaml)
        self.report(trained)
        self.progress.stop.check("after training")
        # What gets encrypted: the best weights, or the ONNX export (and its engine) when exporting.
        model_file, model_sha = trained.best, trained.sha256
        engine: tuple[Path, str] | None = None
        parity: ParityCheck | None = None
        if settings.export_onnx:
            exported = self.export(trained)
            self.report(exported)  # the parity figures show in status before any refusal
            parity = exported.parity
            refusal = parity.refusal() if parity is not None else None
            if refusal is not None:
                raise PermanentError(refusal)
            model_file, model_sha = exported.onnx, exported.sha256
            if exported.engine is not None and exported.engine_sha256 is not None:
                engine = exported.engine, exported.engine_sha256
            self.progress.stop.check("after export")
        encrypted = encrypted_engine = None
        if key is not None:
            encrypted = self.encrypt(model_file, model_sha, *key)
            self.report(encrypted)
            if engine is not None:
                # Not reported: status.artifacts.encrypted is the model's. The engine's
                # encryption shows in the published manifest and tensorrtUri.
                encrypted_engine = self.encrypt(*engine, *key, done_name=ENCRYPT_ENGINE_DONE)
            self.progress.stop.check("after encryption")
        published = None
        if settings.publishing:
            assert encrypted is not None  # load_key guarantees a key when publishing
            published = self.publish(encrypted, trained, dataset, engine=encrypted_engine, parity=parity)
            self.report(published)
        if settings.promote:
            self.report(self.promote(trained, published))
        self.track_results(trained, dataset, model_file if settings.export_onnx else None, published)
        self.progress.step("done", percent=100.0, eta_seconds=0)
        log.info("run %s/%s done", settings.resource_namespace, settings.resource_name)

    def dataset(self) -> DatasetResult:
        settings = self.settings
        self.progress.step("dataset")
        try:
            catalog = ClassCatalog.load(settings.classes_path)
        except (ValidationError, ValueError) as error:
            raise PermanentError(f"{settings.classes_file}: invalid class definitions: {error}") from None
        builder = DatasetBuilder(
            settings.layout,
            settings.dataset_dir,
            catalog,
            settings.split,
            settings.seed,
            run=f"{settings.resource_namespace}/{settings.resource_name}",
            on_progress=lambda: self.progress.beat_or_stop("dataset formation"),
        )
        manifest = builder.build()
        return DatasetResult(
            directory=settings.dataset_dir,
            data_yaml=settings.dataset_dir / DATA_YAML,
            train=manifest.counts["train"],
            valid=manifest.counts["valid"],
            test=manifest.counts["test"],
            corrupted=manifest.corrupted,
            manifest_sha256=sha256_file(settings.dataset_dir / MANIFEST),
        )

    def train(self, data_yaml: Path) -> TrainingResult:
        return train(self.settings, data_yaml, self.progress, self.checkpoint_mirror(), self.tracker)

    def track_parameters(self, dataset: DatasetResult) -> None:
        """The run's training parameters and its dataset, once per attempt (MLflow keeps one value each)."""
        if self.tracker is None:
            return
        settings = self.settings
        self.tracker.log_params(
            {
                "model": settings.model,
                "epochs": settings.epochs,
                "batch": settings.batch_size,
                "imgsz": settings.imgsz,
                "optimizer": settings.optimizer,
                "patience": settings.patience,
                "split": ",".join(str(part) for part in settings.split),
                "seed": settings.seed,
                "image": settings.image,
                **{f"extra.{k}": v for k, v in sorted(settings.extra_args.items())},
                "dataset.manifest_sha256": dataset.manifest_sha256,
                "dataset.train": dataset.train,
                "dataset.valid": dataset.valid,
                "dataset.test": dataset.test,
            }
        )

    def track_results(
        self, trained: TrainingResult, dataset: DatasetResult, onnx: Path | None, published: PublishResult | None
    ) -> None:
        """The curves, the dataset manifest and the export to MLflow; the published model registered."""
        tracker = self.tracker
        if tracker is None:
            return
        for name in CURVES:
            tracker.log_artifact(self.run_dir / name)
        tracker.log_artifact(dataset.directory / MANIFEST, "dataset")
        if onnx is not None:
            tracker.log_artifact(onnx, "model")
        if self.settings.mlflow_log_weights:
            tracker.log_artifact(trained.best, "weights")
        if published is not None:
            tracker.register_model(published.artifact_uris[0], {"manifest": published.manifest_uri})

    def checkpoint_mirror(self) -> CheckpointMirror | None:
        """The S3 mirror of the run's checkpoints (``S3_MIRROR_CHECKPOINTS``), sealed with the model key."""
        settings = self.settings
        if not settings.mirror_checkpoints:
            return None
        from azaion_workloads.training.mirror import CheckpointMirror

        key = load_key(settings)
        assert key is not None  # mirroring needs S3_BUCKET, and publishing needs the key
        publisher = self.publisher
        return CheckpointMirror(
            publisher.client,
            publisher.target.bucket,
            publisher.target.prefix,
            settings.resource_namespace,
            settings.resource_name,
            *key,
            on_status=self.progress.mirror,
        )

    def export(self, trained: TrainingResult) -> ExportResult:
        from azaion_workloads.training.export import export

        self.progress.step("export")
        return export(self.settings, trained.best, trained.sha256, self.progress)

    def encrypt(
        self, source: Path, source_sha: str, key: bytes, key_id: str, *, done_name: str = ENCRYPT_DONE
    ) -> EncryptResult:
        """Encrypt ``source`` to ``artifacts/<name>.enc``, recorded in ``done_name``.

        A record of the same source and key whose output is still intact is
        returned as it is: encrypting again would change the file (a new nonce)
        and so everything published from it.
        """
        self.progress.step("encrypt")
        target = self.run_dir / "artifacts" / f"{source.name}.enc"
        done = self.run_dir / done_name
        record = EncryptResult.read(done)
        if (
            record is not None
            and record.source_sha256 == source_sha
            and record.key_id == key_id
            and target.exists()
            and sha256_file(target) == record.sha256
        ):
            log.info("encryption already done (%s); skipping", target)
            return record
        crypto.encrypt_file(source, target, key, key_id, on_chunk=lambda _n: self.progress.beat_or_stop("encryption"))
        record = EncryptResult(
            source=self.rel(source),
            source_sha256=source_sha,
            encrypted=self.rel(target),
            sha256=sha256_file(target),
            size=target.stat().st_size,
            key_id=key_id,
        )
        atomic_write_bytes(done, record.dump())
        return record

    def publish(
        self,
        model: EncryptResult,
        trained: TrainingResult,
        dataset: DatasetResult | None = None,
        *,
        engine: EncryptResult | None = None,
        parity: ParityCheck | None = None,
    ) -> PublishResult:
        """Upload the encrypted model (and engine), then the manifest; skip what is already there.

        ``model`` and ``engine`` are what :meth:`encrypt` returned; the plain
        hash and key id in the manifest come from them. The engine goes up
        exactly like the model, split mode included, and is the manifest's
        second artifact (``"format": "tensorrt"``), so readers of the first one
        see no change. ``dataset`` fills the manifest's dataset entry (its
        fields are null without it); ``parity``, the export's parity gate,
        becomes ``model.parity`` (left out when the gate is off).

        The manifest is compared with the one in the store first: a retry after
        a complete publish uploads nothing (not even the API part in split mode).
        """
        settings = self.settings
        self.progress.step("publish")
        publisher = self.publisher
        uploads = [self._prepare(publisher, model)]
        if engine is not None:
            uploads.append(self._prepare(publisher, engine, kind="tensorrt"))
        uris = [_uri(artifact) for _, artifact, _ in uploads]

        document = {
            "schemaVersion": 1,
            "run": {"namespace": settings.resource_namespace, "name": settings.resource_name},
            "image": settings.image,
            "model": {
                "source": settings.model,
                "epochs": settings.epochs,
                "imgsz": settings.imgsz,
                "bestEpoch": trained.best_epoch,
                "ptSha256": trained.sha256,
                **({"parity": parity.document()} if parity is not None else {}),
            },
            "metrics": trained.metrics,
            "dataset": {
                "manifestSha256": dataset.manifest_sha256 if dataset else None,
                "train": dataset.train if dataset else None,
                "valid": dataset.valid if dataset else None,
                "test": dataset.test if dataset else None,
            },
            "artifacts": [artifact for _, artifact, _ in uploads],
        }
        curves = self._publish_curves(publisher)
        if curves:
            document["curves"] = curves
        manifest_key = publisher.manifest_key(settings.resource_namespace, settings.resource_name)
        manifest_uri = publisher.uri(manifest_key)
        previous = publisher.get_json(manifest_key)
        if previous is not None and {k: v for k, v in previous.items() if k != "publishedAt"} == json.loads(
            json.dumps(document)
        ):
            log.info("manifest %s already published; skipping", manifest_key)
        else:
            for path, artifact, split_files in uploads:
                if split_files is not None:
                    self._upload_split(publisher, artifact, *split_files)
                else:
                    publisher.upload_blob(path, artifact["sha256"], artifact["size"])
            # Last: only now does the run's model become visible to readers.
            document["publishedAt"] = rfc3339()
            publisher.put_json(manifest_key, document)
            log.info("published manifest %s", manifest_uri)
        atomic_write_bytes(
            self.run_dir / PUBLISH_DONE,
            json.dumps({"manifestUri": manifest_uri, "publishedUris": uris}, indent=2).encode(),
        )
        curve_uris = {name: entry["uri"] for name, entry in curves.items()}
        return PublishResult(manifest_uri, tuple(uris), uris[1] if engine is not None else None, curve_uris)

    def _publish_curves(self, publisher: Publisher) -> dict[str, dict[str, str]]:
        """ultralytics' results.csv and results.png, beside the manifest (before it: it is written last)."""
        settings = self.settings
        curves: dict[str, dict[str, str]] = {}
        for name, content_type in CURVES.items():
            path = self.run_dir / name
            if not path.is_file():
                continue
            digest = sha256_file(path)
            key = publisher.key("runs", settings.resource_namespace, settings.resource_name, name)
            curves[name] = {"uri": publisher.upload_file(path, key, digest, content_type), "sha256": digest}
        return curves

    def _prepare(
        self, publisher: Publisher, encrypted: EncryptResult, kind: str | None = None
    ) -> tuple[Path, dict[str, Any], tuple[Path, bytes] | None]:
        """The manifest entry of one encrypted file, and what to upload for it.

        Returns the file, its manifest artifact and, in split mode, the S3 part's
        file with the API's prefix bytes (else None: the file goes up whole).
        """
        path = self.root / encrypted.encrypted
        artifact: dict[str, Any] = {
            "name": path.name,
            "sha256": encrypted.sha256,
            "size": encrypted.size,
            "plainSha256": encrypted.source_sha256,
            "encryption": {"algorithm": "AES-256-GCM", "formatVersion": crypto.VERSION, "keyId": encrypted.key_id},
        }
        if kind is not None:  # the model's entry has no format key: it stays as it always was
            artifact["format"] = kind
        if self.settings.api_url:
            return path, artifact, self._split(path, artifact, publisher)
        key = publisher.blob_key(encrypted.sha256)
        artifact.update(key=key, uri=publisher.uri(key))
        return path, artifact, None

    def _split(self, path: Path, artifact: dict[str, Any], publisher: Publisher) -> tuple[Path, bytes]:
        """Cut the encrypted model into the API prefix and the S3 rest (streamed, not loaded)."""
        from azaion_workloads.training.publish import small_part_size

        settings = self.settings
        assert settings.api_url and settings.api_folder
        small = small_part_size(artifact["size"])
        tail_file = self.run_dir / "artifacts" / f"{path.name}.big"
        tail_digest = hashlib.sha256()
        with path.open("rb") as source, atomic_writer(tail_file) as target:
            head = source.read(small)
            for block in iter(lambda: source.read(1024 * 1024), b""):
                tail_digest.update(block)
                target.write(block)
        key = publisher.blob_key(tail_digest.hexdigest())
        artifact["split"] = {
            "small": {
                "api": f"{settings.api_url.rstrip('/')}/resources/{settings.api_folder}",
                "name": f"{path.name}.small",
                "size": len(head),
                "sha256": hashlib.sha256(head).hexdigest(),
            },
            "big": {
                "key": key,
                "uri": publisher.uri(key),
                "size": tail_file.stat().st_size,
                "sha256": tail_digest.hexdigest(),
            },
        }
        return tail_file, head

    def _upload_split(self, publisher: Publisher, artifact: dict[str, Any], tail_file: Path, head: bytes) -> None:
        from azaion_workloads.training.publish import AzaionApi

        settings = self.settings
        assert settings.api_url and settings.api_email and settings.api_password and settings.api_folder
        big = artifact["split"]["big"]
        publisher.upload_blob(tail_file, big["sha256"], big["size"])
        api = AzaionApi(settings.api_url, settings.api_email, settings.api_password.get_secret_value())
        api.upload(settings.api_folder, artifact["split"]["small"]["name"], head)

    def promote(self, trained: TrainingResult, published: PublishResult | None = None) -> PromoteResult:
        """Make this run's best model the current one, locally and, once published, in the store."""
        self.progress.step("promote")
        current = self.settings.layout.current_model
        if not current.exists() or sha256_file(current) != trained.sha256:
            atomic_copy(trained.best, current)
            log.info("promoted %s to %s", self.rel(trained.best), self.rel(current))
        if published is None:
            return PromoteResult(current)
        publisher = self.publisher
        pointer = {
            "manifest": published.manifest_uri,
            "run": {"namespace": self.settings.resource_namespace, "name": self.settings.resource_name},
        }
        key = publisher.key("current.json")
        existing = publisher.get_json(key) or {}
        if {k: v for k, v in existing.items() if k != "promotedAt"} != pointer:
            publisher.put_json(key, {**pointer, "promotedAt": rfc3339()})
        return PromoteResult(current, publisher.uri(key))


def _uri(artifact: dict[str, Any]) -> str:
    """Where the S3 copy of a manifest artifact lives (its big part in split mode)."""
    return str(artifact["split"]["big"]["uri"] if "split" in artifact else artifact["uri"])
