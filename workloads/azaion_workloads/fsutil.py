"""Durable file operations: what is on disk after a crash is old or new, never half."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: Prefix of every temporary file this project writes; a scan for leftovers
#: (after a crash) looks for exactly this.
TEMP_PREFIX = ".azaion-tmp-"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc_syncfs() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None


_SYNCFS = _libc_syncfs()
#: Whether :func:`syncfs` works here (Linux); elsewhere callers fsync file by file.
SYNCFS_AVAILABLE = _SYNCFS is not None


def syncfs(path: str | os.PathLike[str]) -> None:
    """Make everything written to the filesystem holding ``path`` durable: contents, renames, unlinks.

    One syncfs(2) costs one journal commit however many files changed, where
    fsyncing each file and directory costs one each; Linux reports writeback
    errors of the filesystem through it (since 5.8), so a failing disk raises.
    """
    if _SYNCFS is None:
        raise OSError("syncfs(2) is not available on this system")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), os.fspath(path))
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644, *, sync_directory: bool = True) -> Iterator[BinaryIO]:
    """Yield a file that replaces ``path`` atomically when the block succeeds.

    The temporary file lives in the destination directory (so the rename is
    atomic), is fsynced before the rename, and the directory after it. On an
    exception the temporary file is removed and ``path`` is untouched.

    ``sync_directory=False`` leaves the directory fsync to the caller, who
    batches it (one fsync per directory for many renames) and must do it
    before anything relies on the rename having survived a power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if sync_directory:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, *, sync_directory: bool = True) -> None:
    with atomic_writer(path, mode, sync_directory=sync_directory) as handle:
        handle.write(data)


def atomic_copy(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` so a reader sees all of it or none."""
    with source.open("rb") as src, atomic_writer(destination) as dst:
        shutil.copyfileobj(src, dst, length=1024 * 1024)


def durable_move(source: Path, destination: Path) -> bool:
    """Move a file within one filesystem durably (both directories fsynced); False when ``source`` is missing.

    A move whose destination already holds the file and whose source is gone is
    a no-op (idempotent replay).
    """
    if not source.exists():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, destination)
    fsync_dir(destination.parent)
    if destination.parent != source.parent:
        fsync_dir(source.parent)
    return True


def leftover_temp_files(root: Path) -> list[Path]:
    """Temporary files left under ``root`` (e.g. by a kill -9)."""
    return sorted(root.rglob(f"{TEMP_PREFIX}*"))


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (checkpoints and models are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()
