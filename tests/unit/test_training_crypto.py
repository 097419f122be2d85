"""Chunked AES-256-GCM model encryption: round trips, wrong keys, tampering."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from azaion_workloads.training import crypto

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _encrypt(data: bytes, key: bytes = KEY, chunk_size: int = 64 * 1024, key_id: str = "") -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), out, key, key_id or crypto.key_fingerprint(key), chunk_size)
    return out.getvalue()


def _decrypt(blob: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(blob), out, key)
    return out.getvalue()


@pytest.mark.parametrize("size", [0, 1, 10 * 1024 * 1024])
def test_round_trip(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    plain, sealed, back = tmp_path / "m.onnx", tmp_path / "m.onnx.enc", tmp_path / "back.onnx"
    plain.write_bytes(data)
    crypto.encrypt_file(plain, sealed, KEY, chunk_size=1024 * 1024)
    assert sealed.read_bytes()[:8] == crypto.MAGIC
    assert size < 64 or data[:64] not in sealed.read_bytes()
    header = crypto.decrypt_file(sealed, back, KEY)
    assert back.read_bytes() == data
    assert header.version == crypto.VERSION
    assert header.key_id == crypto.key_fingerprint(KEY)


def test_exact_multiple_of_chunk_size() -> None:
    data = os.urandom(3 * 4096)
    assert _decrypt(_encrypt(data, chunk_size=4096)) == data


def test_wrong_key_is_named() -> None:
    blob = _encrypt(b"model bytes" * 1000)
    with pytest.raises(crypto.WrongKeyError, match="wrong key"):
        _decrypt(blob, OTHER_KEY)


def test_wrong_key_with_configured_key_id() -> None:
    blob = _encrypt(b"model bytes" * 1000, key_id="prod-2026")
    with pytest.raises(crypto.WrongKeyError, match="wrong key"):
        _decrypt(blob, OTHER_KEY)


@pytest.mark.parametrize("where", ["first-chunk", "last-chunk", "tag"])
def test_flipped_bit_is_detected(tmp_path: Path, where: str) -> None:
    data = os.urandom(200_000)
    blob = bytearray(_encrypt(data, chunk_size=64 * 1024))
    header_len = len(crypto.Header(1, 1, 1, crypto.key_fingerprint(KEY), b"\0" * 7).encode())
    offset = {"first-chunk": header_len + 10, "last-chunk": len(blob) - 100, "tag": len(blob) - 1}[where]
    blob[offset] ^= 0x01
    sealed, out = tmp_path / "x.enc", tmp_path / "x"
    sealed.write_bytes(bytes(blob))
    with pytest.raises(crypto.TamperedError, match="failed authentication"):
        crypto.decrypt_file(sealed, out, KEY)
    # Nothing half-decrypted is left behind under the output name.
    assert not out.exists()


def test_flipped_bit_in_header_is_detected() -> None:
    blob = bytearray(_encrypt(b"abc" * 1000))
    blob[len(blob) - 3000 - 16 - 1] ^= 0x80  # last byte of the nonce prefix
    with pytest.raises(crypto.CryptoError):
        _decrypt(bytes(blob))


def test_truncation_and_extension_are_detected() -> None:
    blob = _encrypt(os.urandom(10_000), chunk_size=4096)  # chunks of 4096, 4096, 1808 bytes
    last_chunk = 1808 + crypto.TAG_SIZE
    with pytest.raises(crypto.TamperedError, match="chunk 1"):
        _decrypt(blob[:-last_chunk])  # a whole chunk dropped: chunk 1 was not sealed as last
    with pytest.raises(crypto.CryptoError):
        _decrypt(blob + b"\0" * 32)


def test_not_an_encrypted_file() -> None:
    with pytest.raises(crypto.CryptoError, match="bad magic"):
        _decrypt(b"PK\x03\x04" + b"\0" * 100)


@pytest.mark.parametrize(
    "encoded",
    [KEY, KEY.hex().encode() + b"\n", base64.b64encode(KEY) + b"\n"],
    ids=["raw", "hex", "base64"],
)
def test_key_forms(tmp_path: Path, encoded: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(encoded)
    assert crypto.load_key(path) == KEY


@pytest.mark.parametrize("encoded", [b"short", b"z" * 64, base64.b64encode(b"x" * 16)])
def test_bad_keys_are_refused(tmp_path: Path, encoded: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(encoded)
    with pytest.raises(crypto.CryptoError, match="not a 256-bit key"):
        crypto.load_key(path)
