"""Publishing to S3-compatible storage: content-addressed blobs, manifest last.

Object keys (``S3_PREFIX`` defaults to ``azaion``)::

    <prefix>/blobs/sha256/<hex>                 every artifact, named by its hash
    <prefix>/runs/<namespace>/<run>/manifest.json
    <prefix>/current.json                       the promoted run (PUBLISH_PROMOTE)

Blobs go up first (multipart through boto3's transfer manager); the manifest,
which is the only thing a reader looks up by name, is one PUT written after
every blob it names exists, so nobody ever sees half a publish. A retry finds
the blobs already there (same key, same size, same sha256 metadata) and skips
them.

Compatibility mode (``AZAION_API_URL`` set) reproduces the original split
upload: the encrypted model's prefix (``max(3 KiB, 20%)`` of it, capped at the
whole file) goes to the Azaion REST API, the rest to S3.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib import error as urlerror
from urllib import request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

MiB = 1024 * 1024
SMALL_PART_MIN = 3 * 1024
SMALL_PART_FRACTION = 0.2


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str
    endpoint: str | None = None
    region: str = "us-east-1"


def make_client(target: S3Target) -> Any:
    """An S3 client; path-style addressing works with every S3-compatible server."""
    return boto3.client(
        "s3",
        endpoint_url=target.endpoint,
        region_name=target.region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 8, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


class Publisher:
    def __init__(
        self,
        target: S3Target,
        client: Any | None = None,
        transfer: TransferConfig | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.target = target
        self.client = client or make_client(target)
        self.transfer = transfer or TransferConfig(
            multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB, max_concurrency=4
        )
        self.on_progress = on_progress or (lambda: None)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.target.prefix, *parts) if p)

    def uri(self, key: str) -> str:
        return f"s3://{self.target.bucket}/{key}"

    def blob_key(self, sha256: str) -> str:
        return self.key("blobs", "sha256", sha256)

    def manifest_key(self, namespace: str, name: str) -> str:
        return self.key("runs", namespace, name, "manifest.json")

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.target.bucket, Key=key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def upload_blob(self, path: Path, sha256: str, size: int) -> str:
        """Upload ``path`` under its hash unless that exact object is there; return its key."""
        key = self.blob_key(sha256)
        existing = self.head(key)
        if (
            existing is not None
            and existing.get("ContentLength") == size
            and existing.get("Metadata", {}).get("sha256") == sha256
        ):
            log.info("blob %s already published; skipping", key)
            return key
        self.client.upload_file(
            str(path),
            self.target.bucket,
            key,
            ExtraArgs={"Metadata": {"sha256": sha256}, "ContentType": "application/octet-stream"},
            Config=self.transfer,
            Callback=lambda _sent: self.on_progress(),
        )
        log.info("published %s (%d bytes)", key, size)
        return key

    def upload_file(self, path: Path, key: str, sha256: str, content_type: str) -> str:
        """Upload ``path`` to ``key`` unless that very content is there; return its URI."""
        existing = self.head(key)
        if existing is None or existing.get("Metadata", {}).get("sha256") != sha256:
            self.client.upload_file(
                str(path),
                self.target.bucket,
                key,
                ExtraArgs={"Metadata": {"sha256": sha256}, "ContentType": content_type},
                Config=self.transfer,
            )
            log.info("published %s", key)
        return self.uri(key)

    def get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return dict(json.loads(body))

    def put_json(self, key: str, document: dict[str, Any]) -> str:
        """One PUT: readers see the old document or the new one, never a mix."""
        self.client.put_object(
            Bucket=self.target.bucket,
            Key=key,
            Body=json.dumps(document, indent=2, sort_keys=True).encode(),
            ContentType="application/json",
        )
        return self.uri(key)


def small_part_size(total: int) -> int:
    """Bytes of the prefix sent to the API in split mode: ``max(3 KiB, 20%)``, capped."""
    return min(total, max(SMALL_PART_MIN, int(total * SMALL_PART_FRACTION)))


class AzaionApiError(RuntimeError):
    pass


class AzaionApi:
    """The two calls of the Azaion REST API that publishing uses.

    ``POST /login`` with ``{"email", "password"}`` answers a JWT (read from
    ``token``, ``accessToken``, ``access_token`` or a bare JSON string);
    ``POST /resources/{folder}`` takes a multipart upload (field ``data``).
    On 401/403 it logs in again once and repeats the call.
    """

    def __init__(self, url: str, email: str, password: str, timeout: float = 60.0) -> None:
        self.url, self.email, self.password, self.timeout = (
            url.rstrip("/"),
            email,
            password,
            timeout,
        )
        self._token: str | None = None

    def login(self) -> str:
        body = json.dumps({"email": self.email, "password": self.password}).encode()
        req = request.Request(  # noqa: S310 - http(s) only, checked in the settings
            f"{self.url}/login", data=body, headers={"Content-Type": "application/json"}
        )
        with request.urlopen(req, timeout=self.timeout) as response:  # noqa: S310 - configured URL
            payload = json.loads(response.read() or b"null")
        token = payload if isinstance(payload, str) else None
        if isinstance(payload, dict):
            token = next(
                (payload[k] for k in ("token", "Token", "accessToken", "access_token") if payload.get(k)),
                None,
            )
        if not token:
            raise AzaionApiError("login answered no token")
        self._token = str(token)
        return self._token

    def upload(self, folder: str, filename: str, data: bytes) -> None:
        for attempt in (1, 2):
            token = self._token or self.login()
            boundary = uuid.uuid4().hex
            body = (
                (
                    f"--{boundary}\r\n"
                    f'Content-Disposition: form-data; name="data"; filename="{filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + data
                + f"\r\n--{boundary}--\r\n".encode()
            )
            req = request.Request(  # noqa: S310 - http(s) only, checked in the settings
                f"{self.url}/resources/{folder}",
                data=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
            )
            try:
                with request.urlopen(req, timeout=self.timeout):  # noqa: S310 - configured URL
                    return
            except urlerror.HTTPError as error:
                if error.code in (401, 403) and attempt == 1:
                    log.info("API answered %s; logging in again", error.code)
                    self._token = None
                    continue
                raise AzaionApiError(f"upload to /resources/{folder} failed: HTTP {error.code}") from None
