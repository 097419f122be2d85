"""The steps of one training run, each skipped when its result is already there.

dataset -> training -> export -> encrypt -> publish -> promote. Every step
records what it produced (a manifest or a small JSON file in the run
directory, written atomically after its outputs), so a retry after any crash
continues at the first step whose record is missing or no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from azaion_contract.models.trainingrun import Artifacts, DatasetArtifact
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

if TYPE_CHECKING:  # the export module pulls in numpy: imported only when exporting
    from azaion_workloads.training.export import ExportResult

log = logging.getLogger(__name__)

ENCRYPT_DONE = "encrypt.json"
#: The TensorRT engine's encryption record (a separate step result: it may come and go).
ENCRYPT_ENGINE_DONE = "encrypt-engine.json"
PUBLISH_DONE = "publish.json"


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
    def __init__(self, settings: TrainingSettings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.root = settings.layout.root
        self.run_dir = settings.run_dir
        #: Everything reported to status.artifacts so far (the manifest repeats some of it).
        self.artifacts = Artifacts()

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def report_artifacts(self, **fields: Any) -> None:
        """Report :class:`Artifacts` fields (by Python name) and remember them."""
        sent = self.progress.artifacts(**fields)
        self.artifacts = self.artifacts.model_copy(update={name: getattr(sent, name) for name in sent.model_fields_set})

    # Steps ---------------------------------------------------------------

    def run(self) -> None:
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
        data_yaml = self.dataset()
        self.progress.stop.check("after dataset formation")
        result = self.train(data_yaml)
        self.progress.stop.check("after training")
        model_file, model_sha = result.best, result.sha256
        engine: tuple[Path, str] | None = None
        if settings.export_onnx:
            exported = self.export(result)
            model_file, model_sha = exported.onnx, exported.sha256
            if exported.engine is not None and exported.engine_sha256 is not None:
                engine = exported.engine, exported.engine_sha256
            self.progress.stop.check("after export")
        encrypted = encrypted_engine = None
        if key is not None:
            encrypted = self.encrypt(model_file, model_sha, *key)
            if engine is not None:
                encrypted_engine = self.encrypt(*engine, *key, done_name=ENCRYPT_ENGINE_DONE)
            self.progress.stop.check("after encryption")
        if settings.publishing:
            assert encrypted is not None  # load_key guarantees a key when publishing
            self.publish(encrypted, model_sha, result, key[1] if key else "", engine=encrypted_engine)
        if settings.promote:
            self.promote(result)
        self.progress.step("done", percent=100.0, eta_seconds=0)
        log.info("run %s/%s done", settings.resource_namespace, settings.resource_name)

    def dataset(self) -> Path:
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
        self.report_artifacts(
            dataset=build(
                DatasetArtifact,
                path=self.rel(settings.dataset_dir),
                train=manifest.counts["train"],
                valid=manifest.counts["valid"],
                test=manifest.counts["test"],
                corrupted=manifest.corrupted,
                manifest_sha256=sha256_file(settings.dataset_dir / MANIFEST),
            )
        )
        return settings.dataset_dir / DATA_YAML

    def train(self, data_yaml: Path) -> TrainingResult:
        result = train(self.settings, data_yaml, self.progress)
        self.report_artifacts(model=self.rel(result.best), model_sha256=result.sha256)
        return result

    def export(self, result: TrainingResult) -> ExportResult:
        from azaion_workloads.training.export import export

        self.progress.step("export")
        exported = export(self.settings, result.best, result.sha256, self.progress)
        self.report_artifacts(onnx=self.rel(exported.onnx), onnx_sha256=exported.sha256)
        if exported.engine is not None:
            self.report_artifacts(tensorrt=self.rel(exported.engine), tensorrt_sha256=exported.engine_sha256)
        return exported

    def encrypt(
        self, source: Path, source_sha: str, key: bytes, key_id: str, *, done_name: str = ENCRYPT_DONE
    ) -> dict[str, Any]:
        """Encrypt ``source`` to ``artifacts/<name>.enc``, recorded in ``done_name``.

        The model's encryption is reported in status (``encrypted``); another
        file's (the TensorRT engine) only in its record and, once published,
        in the manifest.
        """
        self.progress.step("encrypt")
        target = self.run_dir / "artifacts" / f"{source.name}.enc"
        done = self.run_dir / done_name
        record = _read_json(done)
        if (
            record
            and record.get("sourceSha256") == source_sha
            and record.get("keyId") == key_id
            and target.exists()
            and sha256_file(target) == record.get("sha256")
        ):
            log.info("encryption already done (%s); skipping", target)
        else:
            crypto.encrypt_file(
                source, target, key, key_id, on_chunk=lambda _n: self.progress.beat_or_stop("encryption")
            )
            record = {
                "source": self.rel(source),
                "sourceSha256": source_sha,
                "encrypted": self.rel(target),
                "sha256": sha256_file(target),
                "size": target.stat().st_size,
                "keyId": key_id,
                "format": {"algorithm": "AES-256-GCM", "version": crypto.VERSION},
            }
            atomic_write_bytes(done, json.dumps(record, indent=2).encode())
        if done_name == ENCRYPT_DONE:
            self.report_artifacts(encrypted=record["encrypted"], encrypted_sha256=record["sha256"])
        return record

    def publish(
        self,
        encrypted: dict[str, Any],
        plain_sha: str,
        result: TrainingResult,
        key_id: str,
        *,
        engine: dict[str, Any] | None = None,
    ) -> None:
        """Upload the encrypted model (and engine), then the manifest; skip what is already there.

        ``encrypted`` and ``engine`` are encryption records (see :meth:`encrypt`).
        The engine goes up exactly like the model, split mode included, and is
        the manifest's second artifact (``"format": "tensorrt"``), so readers
        of the first one see no change.

        The manifest is compared with the one in the store first: a retry after
        a complete publish uploads nothing (not even the API part in split mode).
        """
        from azaion_workloads.training.publish import Publisher, S3Target

        settings = self.settings
        self.progress.step("publish")
        assert settings.s3_bucket is not None
        publisher = Publisher(
            S3Target(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint, settings.s3_region),
            on_progress=self.progress.beat,
        )
        uploads = [self._prepare(publisher, encrypted, plain_sha, key_id)]
        if engine is not None:
            uploads.append(self._prepare(publisher, engine, engine["sourceSha256"], key_id, kind="tensorrt"))
        uris = [_uri(artifact) for _, artifact, _ in uploads]

        dataset = self.artifacts.dataset or DatasetArtifact()
        document = {
            "schemaVersion": 1,
            "run": {"namespace": settings.resource_namespace, "name": settings.resource_name},
            "image": settings.image,
            "model": {
                "source": settings.model,
                "epochs": settings.epochs,
                "imgsz": settings.imgsz,
                "bestEpoch": result.best_epoch,
                "ptSha256": result.sha256,
            },
            "metrics": result.metrics,
            "dataset": {
                "manifestSha256": dataset.manifest_sha256,
                "train": dataset.train,
                "valid": dataset.valid,
                "test": dataset.test,
            },
            "artifacts": [artifact for _, artifact, _ in uploads],
        }
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
        self.publisher = publisher
        self.manifest_key = manifest_key
        self.report_artifacts(
            manifest_uri=manifest_uri,
            published_uris=[*uris, manifest_uri],
            **({"tensorrt_uri": uris[1]} if engine is not None else {}),
        )

    def _prepare(
        self, publisher: Any, encrypted: dict[str, Any], plain_sha: str, key_id: str, kind: str | None = None
    ) -> tuple[Path, dict[str, Any], tuple[Path, bytes] | None]:
        """The manifest entry of one encrypted file, and what to upload for it.

        Returns the file, its manifest artifact and, in split mode, the S3 part's
        file with the API's prefix bytes (else None: the file goes up whole).
        """
        path = self.root / encrypted["encrypted"]
        artifact: dict[str, Any] = {
            "name": path.name,
            "sha256": encrypted["sha256"],
            "size": int(encrypted["size"]),
            "plainSha256": plain_sha,
            "encryption": {"algorithm": "AES-256-GCM", "formatVersion": crypto.VERSION, "keyId": key_id},
        }
        if kind is not None:  # the model's entry has no format key: it stays as it always was
            artifact["format"] = kind
        if self.settings.api_url:
            return path, artifact, self._split(path, artifact, publisher)
        key = publisher.blob_key(encrypted["sha256"])
        artifact.update(key=key, uri=publisher.uri(key))
        return path, artifact, None

    def _split(self, path: Path, artifact: dict[str, Any], publisher: Any) -> tuple[Path, bytes]:
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

    def _upload_split(self, publisher: Any, artifact: dict[str, Any], tail_file: Path, head: bytes) -> None:
        from azaion_workloads.training.publish import AzaionApi

        settings = self.settings
        assert settings.api_url and settings.api_email and settings.api_password and settings.api_folder
        big = artifact["split"]["big"]
        publisher.upload_blob(tail_file, big["sha256"], big["size"])
        api = AzaionApi(settings.api_url, settings.api_email, settings.api_password.get_secret_value())
        api.upload(settings.api_folder, artifact["split"]["small"]["name"], head)

    def promote(self, result: TrainingResult) -> None:
        """Make this run's best model the current one, locally and in the store."""
        self.progress.step("promote")
        current = self.settings.layout.current_model
        if not current.exists() or sha256_file(current) != result.sha256:
            atomic_copy(result.best, current)
            log.info("promoted %s to %s", self.rel(result.best), self.rel(current))
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            pointer = {
                "manifest": publisher.uri(self.manifest_key),
                "run": {"namespace": self.settings.resource_namespace, "name": self.settings.resource_name},
            }
            key = publisher.key("current.json")
            existing = publisher.get_json(key) or {}
            if {k: v for k, v in existing.items() if k != "promotedAt"} != pointer:
                publisher.put_json(key, {**pointer, "promotedAt": rfc3339()})
        self.report_artifacts(promoted=True)


def _uri(artifact: dict[str, Any]) -> str:
    """Where the S3 copy of a manifest artifact lives (its big part in split mode)."""
    return str(artifact["split"]["big"]["uri"] if "split" in artifact else artifact["uri"])


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
