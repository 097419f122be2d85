"""The S3 fixture serves the S3 HTTP API: an object put comes back intact."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.integration


def test_put_get_round_trip(s3_server: S3Server) -> None:
    client = s3_server.client()
    bucket = s3_server.new_bucket()
    body = os.urandom(256 * 1024)
    client.put_object(Bucket=bucket, Key="a/b/blob.bin", Body=body, Metadata={"sha256": "x"})

    got = client.get_object(Bucket=bucket, Key="a/b/blob.bin")
    assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(body).digest()
    assert got["Metadata"] == {"sha256": "x"}
    listed = client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["a/b/blob.bin"]
    assert s3_server.endpoint.startswith("http://")
