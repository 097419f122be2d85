"""Publishing against a real S3 server (moto over HTTP) and a fake Azaion API.

The Azaion REST API cannot run here, so the split-upload compatibility mode is
tested against a small local HTTP server that imitates its two calls
(``POST /login`` and ``POST /resources/{folder}``), including a 401 that
forces a second login.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from azaion_workloads.heartbeat import Heartbeat
from azaion_workloads.status import FileStatusReporter
from azaion_workloads.training import crypto
from azaion_workloads.training.config import load_settings
from azaion_workloads.training.pipeline import ENCRYPT_ENGINE_DONE, EncryptResult, Pipeline, PublishResult
from azaion_workloads.training.progress import Progress, StopFlag
from azaion_workloads.training.publish import MiB, Publisher, S3Target, small_part_size
from azaion_workloads.training.train import TrainingResult
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.integration


def test_multipart_upload_is_content_addressed_and_idempotent(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    data = os.urandom(12 * MiB + 123)
    path = tmp_path / "model.enc"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    small_parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    publisher = Publisher(S3Target(bucket, "p", s3_server.endpoint), s3_server.client(), small_parts)

    key = publisher.upload_blob(path, sha, len(data))
    assert key == f"p/blobs/sha256/{sha}"
    head = s3_server.client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: it went up as multipart
    assert head["Metadata"]["sha256"] == sha
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha

    publisher.upload_blob(path, sha, len(data))  # a retry: nothing is sent again
    assert s3_server.client().head_object(Bucket=bucket, Key=key)["LastModified"] == head["LastModified"]


class FakeAzaionApi:
    """Imitates the Azaion API's login and resource upload; records what it got."""

    def __init__(self) -> None:
        self.uploads: list[dict[str, Any]] = []
        self.logins = 0
        self.reject_next_upload = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"", kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/login":
                    credentials = json.loads(body)
                    if credentials != {"email": "ci@azaion.local", "password": "s3cret"}:
                        return self._reply(401)
                    api.logins += 1
                    return self._reply(200, json.dumps({"token": f"jwt-{api.logins}"}).encode())
                if self.path.startswith("/resources/"):
                    if self.headers.get("Authorization") != f"Bearer jwt-{api.logins}":
                        return self._reply(401)
                    if api.reject_next_upload:  # the token "expired": the client must log in again
                        api.reject_next_upload = False
                        return self._reply(403)
                    message = BytesParser(policy=HTTP).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
                    )
                    (part,) = list(message.iter_parts())
                    api.uploads.append(
                        {
                            "folder": self.path.removeprefix("/resources/"),
                            "field": part.get_param("name", header="content-disposition"),
                            "filename": part.get_filename(),
                            "data": part.get_payload(decode=True),
                        }
                    )
                    return self._reply(200, b"{}")
                return self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeAzaionApi:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api() -> Iterator[FakeAzaionApi]:
    with FakeAzaionApi() as api:
        yield api


@pytest.mark.parametrize("size", [1000, 100_000])
def test_split_upload_compat_mode(
    tmp_path: Path, s3_server: S3Server, fake_api: FakeAzaionApi, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket()
    root = tmp_path / "root"
    env = {
        "AZAION_ROOT_DIR": str(root),
        "AZAION_RESOURCE_NAME": "split",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT": s3_server.endpoint,
        "AZAION_API_URL": fake_api.url,
        "AZAION_API_EMAIL": "ci@azaion.local",
        "AZAION_API_PASSWORD": "s3cret",
        "AZAION_API_FOLDER": "models",
    }
    for name, value in s3_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)  # boto3 reads the credentials from the environment
    settings = load_settings(env)
    encrypted = settings.run_dir / "artifacts" / "azaion.onnx.enc"
    encrypted.parent.mkdir(parents=True)
    data = os.urandom(size)
    encrypted.write_bytes(data)
    progress = Progress(FileStatusReporter(tmp_path / "status.json"), Heartbeat(tmp_path / "hb"), StopFlag())
    pipeline = Pipeline(settings, progress)
    record = EncryptResult(
        source="models/local/split/artifacts/azaion.onnx",
        source_sha256="plain-sha",
        encrypted=str(encrypted.relative_to(root)),
        sha256=hashlib.sha256(data).hexdigest(),
        size=size,
        key_id="key-1",
    )
    best = tmp_path / "best.pt"
    best.write_bytes(b"pt")
    trained = TrainingResult(best, "pt-sha", 1, {"map50": 0.5})
    published = pipeline.publish(record, trained)
    pipeline.report(published)  # as run() does

    (upload,) = fake_api.uploads
    assert fake_api.logins == 2  # the 403 made it log in again
    assert upload["folder"] == "models" and upload["field"] == "data"
    assert upload["filename"] == "azaion.onnx.enc.small"
    small = small_part_size(size)
    assert small == min(size, max(3 * 1024, size // 5))
    assert upload["data"] == data[:small]

    manifest = json.loads(
        s3_server.client()
        .get_object(Bucket=bucket, Key=f"{settings.s3_prefix}/runs/local/split/manifest.json")["Body"]
        .read()
    )
    (artifact,) = manifest["artifacts"]
    big = artifact["split"]["big"]
    body = s3_server.client().get_object(Bucket=bucket, Key=big["key"])["Body"].read()
    assert upload["data"] + body == data
    assert big["sha256"] == hashlib.sha256(body).hexdigest()
    assert artifact["split"]["small"]["sha256"] == hashlib.sha256(data[:small]).hexdigest()
    assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert artifact["plainSha256"] == "plain-sha" and artifact["encryption"]["keyId"] == "key-1"
    # A retry after a complete publish sends nothing again, to either side.
    assert pipeline.publish(record, trained) == published
    assert len(fake_api.uploads) == 1 and fake_api.logins == 2

    manifest_uri = f"s3://{bucket}/{settings.s3_prefix}/runs/local/split/manifest.json"
    assert published.manifest_uri == manifest_uri and published.artifact_uris == (big["uri"],)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["artifacts"]["manifestUri"] == manifest_uri
    assert status["artifacts"]["publishedUris"] == [big["uri"], manifest_uri]


def test_tensorrt_engine_is_encrypted_and_published_beside_the_model(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: a stand-in engine file goes through the pipeline's encrypt and publish steps."""
    bucket = s3_server.new_bucket()
    root = tmp_path / "root"
    env = {"AZAION_ROOT_DIR": str(root), "AZAION_RESOURCE_NAME": "engine", "S3_BUCKET": bucket}
    env["S3_ENDPOINT"] = s3_server.endpoint
    for name, value in s3_server.env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)  # boto3 reads the credentials from the environment
    settings = load_settings(env)
    artifacts = settings.run_dir / "artifacts"
    artifacts.mkdir(parents=True)
    onnx, engine = artifacts / "azaion.onnx", artifacts / "azaion.cc_8.9_sm_128.engine"
    onnx.write_bytes(os.urandom(5000))
    engine.write_bytes(os.urandom(70_000))
    onnx_sha, engine_sha = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (onnx, engine))
    key = os.urandom(32)
    status_file = tmp_path / "status.json"
    progress = Progress(FileStatusReporter(status_file), Heartbeat(tmp_path / "hb"), StopFlag())
    pipeline = Pipeline(settings, progress)
    best = tmp_path / "best.pt"
    best.write_bytes(b"pt")
    result = TrainingResult(best, "pt-sha", 1, {"map50": 0.5})

    def publish() -> tuple[EncryptResult, EncryptResult, PublishResult]:
        """The encrypt and publish steps, reported as run() reports them (the engine's encryption is not)."""
        model_record = pipeline.encrypt(onnx, onnx_sha, key, "key-1")
        pipeline.report(model_record)
        engine_record = pipeline.encrypt(engine, engine_sha, key, "key-1", done_name=ENCRYPT_ENGINE_DONE)
        published = pipeline.publish(model_record, result, engine=engine_record)
        pipeline.report(published)
        return model_record, engine_record, published

    model_record, engine_record, publish_result = publish()
    # Each step returns its own record; the engine's is on disk like the model's.
    assert model_record.encrypted.endswith("azaion.onnx.enc") and model_record.source_sha256 == onnx_sha
    assert engine_record.encrypted.endswith("azaion.cc_8.9_sm_128.engine.enc")
    assert EncryptResult.read(settings.run_dir / ENCRYPT_ENGINE_DONE) == engine_record
    client = s3_server.client()
    manifest_key = f"{settings.s3_prefix}/runs/local/engine/manifest.json"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    model_entry, engine_entry = manifest["artifacts"]
    assert model_entry["name"] == "azaion.onnx.enc" and "format" not in model_entry
    assert engine_entry["name"] == "azaion.cc_8.9_sm_128.engine.enc"
    assert engine_entry["format"] == "tensorrt"
    assert engine_entry["plainSha256"] == engine_sha
    assert engine_entry["encryption"] == {"algorithm": "AES-256-GCM", "formatVersion": crypto.VERSION, "keyId": "key-1"}
    published = tmp_path / "engine.enc"
    published.write_bytes(client.get_object(Bucket=bucket, Key=engine_entry["key"])["Body"].read())
    assert hashlib.sha256(published.read_bytes()).hexdigest() == engine_entry["sha256"]
    assert published.stat().st_size == engine_entry["size"]
    crypto.decrypt_file(published, tmp_path / "engine.plain", key)
    assert (tmp_path / "engine.plain").read_bytes() == engine.read_bytes()

    status = json.loads(status_file.read_text())["artifacts"]
    manifest_uri = f"s3://{bucket}/{manifest_key}"
    assert status["tensorrtUri"] == engine_entry["uri"] == f"s3://{bucket}/{engine_entry['key']}"
    assert status["publishedUris"] == [model_entry["uri"], engine_entry["uri"], manifest_uri]
    assert status["encrypted"].endswith("azaion.onnx.enc")  # the engine does not replace the model's record
    assert status["encrypted"] == model_record.encrypted and status["encryptedSha256"] == model_record.sha256
    assert publish_result.tensorrt_uri == engine_entry["uri"] and publish_result.manifest_uri == manifest_uri

    # A retry re-encrypts and uploads nothing, and leaves the manifest as it was.
    head = client.head_object(Bucket=bucket, Key=manifest_key)
    assert publish() == (model_record, engine_record, publish_result)
    assert client.head_object(Bucket=bucket, Key=manifest_key)["ETag"] == head["ETag"]
