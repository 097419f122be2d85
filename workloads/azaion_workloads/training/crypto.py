"""Authenticated, chunked encryption of model files (AES-256-GCM).

File format, version 1 (all integers big-endian)::

    magic      8 bytes   b"AZAIONEM"
    version    1 byte    1
    scheme     1 byte    1 = STREAM nonces: 7-byte random prefix | 4-byte counter | last flag
    chunk_size 4 bytes   plaintext bytes per chunk (every chunk but the last is full)
    key_id_len 1 byte
    key_id     key_id_len bytes, UTF-8: which key sealed the file (ENCRYPTION_KEY_ID,
               or by default "sha256:" + 16 hex digits of a hash of the key)
    prefix     7 bytes   random nonce prefix
    chunks     ciphertext + 16-byte tag each; at least one chunk (empty input -> one
               empty final chunk)

Each chunk is sealed with nonce ``prefix || counter || last`` and the whole
header as associated data, so reordering, truncation, appending, a changed
header or a different key all fail authentication. A large model is processed
one chunk at a time: it is never held in memory whole.

The key is 32 bytes, read from a file (a mounted Secret) in one of three
forms: exactly 32 raw bytes; 64 hexadecimal characters; or the base64 of 32
bytes. Surrounding whitespace is ignored for the text forms.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from azaion_workloads.fsutil import atomic_writer

MAGIC = b"AZAIONEM"
VERSION = 1
SCHEME_STREAM = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
TAG_SIZE = 16
PREFIX_SIZE = 7
_FIXED = struct.Struct(">8sBBIB")


class CryptoError(Exception):
    """Decryption or key loading failed; the message says why."""


class WrongKeyError(CryptoError):
    pass


class TamperedError(CryptoError):
    pass


def load_key(path: Path) -> bytes:
    """Read a 32-byte key: raw bytes, 64 hex characters, or base64 (see module doc)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CryptoError(f"cannot read encryption key {path}: {error.strerror}") from None
    return parse_key(data, str(path))


def parse_key(data: bytes, source: str = "key") -> bytes:
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32:
        return decoded
    raise CryptoError(f"{source}: not a 256-bit key (expected 32 raw bytes, 64 hex characters or base64 of 32 bytes)")


def key_fingerprint(key: bytes) -> str:
    """A stable id for a key when none is configured (a hash, not the key)."""
    return "sha256:" + hashlib.sha256(b"azaion-model-key\x00" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Header:
    version: int
    scheme: int
    chunk_size: int
    key_id: str
    prefix: bytes

    def encode(self) -> bytes:
        key_id = self.key_id.encode()
        fixed = _FIXED.pack(MAGIC, self.version, self.scheme, self.chunk_size, len(key_id))
        return fixed + key_id + self.prefix


def read_header(handle: BinaryIO) -> tuple[Header, bytes]:
    fixed = handle.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        raise CryptoError("not an encrypted model: file too short")
    magic, version, scheme, chunk_size, key_id_len = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise CryptoError("not an encrypted model: bad magic bytes")
    if version != VERSION:
        raise CryptoError(f"unsupported encrypted model version {version} (this reads {VERSION})")
    if scheme != SCHEME_STREAM:
        raise CryptoError(f"unsupported nonce scheme {scheme}")
    if chunk_size <= 0 or chunk_size > 256 * 1024 * 1024:
        raise CryptoError(f"implausible chunk size {chunk_size}: header damaged")
    rest = handle.read(key_id_len + PREFIX_SIZE)
    if len(rest) < key_id_len + PREFIX_SIZE:
        raise CryptoError("not an encrypted model: header truncated")
    try:
        key_id = rest[:key_id_len].decode()
    except UnicodeDecodeError:
        raise CryptoError("header damaged: key id is not UTF-8") from None
    header = Header(version, scheme, chunk_size, key_id, rest[key_id_len:])
    return header, fixed + rest


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 2**32:
        raise CryptoError("file too large for one nonce prefix")
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def encrypt_stream(
    source: BinaryIO,
    destination: BinaryIO,
    key: bytes,
    key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Encrypt ``source`` into ``destination``; return the plaintext size."""
    aead = AESGCM(key)
    header = Header(VERSION, SCHEME_STREAM, chunk_size, key_id, os.urandom(PREFIX_SIZE))
    aad = header.encode()
    destination.write(aad)
    total, counter = 0, 0
    chunk = source.read(chunk_size)
    while True:
        # Read one chunk ahead: the last chunk is sealed with the last flag set.
        following = source.read(chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        destination.write(aead.encrypt(_nonce(header.prefix, counter, last), chunk, aad))
        total += len(chunk)
        counter += 1
        if on_chunk:
            on_chunk(total)
        if last:
            return total
        chunk = following


def decrypt_stream(
    source: BinaryIO,
    destination: BinaryIO,
    key: bytes,
    on_chunk: Callable[[int], None] | None = None,
) -> Header:
    """Decrypt ``source`` into ``destination``; raise a :class:`CryptoError` subclass.

    Output written before an error is not trustworthy: callers write to a
    temporary file and keep it only when this returns (see :func:`decrypt_file`).
    """
    header, aad = read_header(source)
    aead = AESGCM(key)
    sealed_size = header.chunk_size + TAG_SIZE
    counter, total = 0, 0
    block = source.read(sealed_size)
    while True:
        following = source.read(sealed_size) if len(block) == sealed_size else b""
        last = not following
        if len(block) < TAG_SIZE:
            raise TamperedError(f"chunk {counter} is truncated: file cut short or modified")
        try:
            plain = aead.decrypt(_nonce(header.prefix, counter, last), block, aad)
        except InvalidTag:
            mine = key_fingerprint(key)
            if counter == 0 and header.key_id != mine:
                named = header.key_id.startswith("sha256:")
                raise WrongKeyError(
                    f"decryption failed: the file was sealed with key {header.key_id!r}, "
                    f"the given key is {mine!r}: wrong key"
                    if named
                    else "decryption failed at chunk 0: wrong key, or the file was modified"
                ) from None
            raise TamperedError(
                f"chunk {counter} failed authentication: the file was modified, truncated or extended"
            ) from None
        destination.write(plain)
        total += len(plain)
        counter += 1
        if on_chunk:
            on_chunk(total)
        if last:
            return header
        block = following


def encrypt_file(
    source: Path,
    destination: Path,
    key: bytes,
    key_id: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    with source.open("rb") as src, atomic_writer(destination) as dst:
        encrypt_stream(src, dst, key, key_id or key_fingerprint(key), chunk_size, on_chunk)


def decrypt_file(source: Path, destination: Path, key: bytes) -> Header:
    """Decrypt to ``destination``, which appears only when every chunk verified."""
    with source.open("rb") as src, atomic_writer(destination) as dst:
        return decrypt_stream(src, dst, key)
