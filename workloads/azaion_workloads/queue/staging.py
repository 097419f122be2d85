"""Group commit: a batch of file operations, visible to the applier at once, on disk at flush.

The consumer applies many messages, then makes them durable together instead
of paying two fsyncs per message. Each file a message writes goes to a
temporary name in its destination directory straight away (memory stays
bounded); the renames, moves and removals wait for :meth:`StagedTree.flush`,
which first makes every temporary file of the batch durable (one syncfs of
each filesystem written to, or fsyncs of each file in parallel: see
:mod:`~azaion_workloads.queue.durability`), then performs the operations in their order,
so the disk ends exactly as if each had been done at once. Meanwhile the
applier sees the batch's effects through :meth:`exists` and
:meth:`read_bytes`, so message n+1 is decided on top of message n.

Why this keeps every guarantee: a reader never sees half a file under its
final name, even after a power loss (contents are durable before the
rename); a crash before ``flush`` leaves only temporary files (removed at
start-up) and the offset from before the batch, so its messages are
replayed; a crash during ``flush`` leaves a prefix of the batch's operations,
which is what a crash between two messages left before, and replays converge
from there (:mod:`apply`). The directory fsyncs that make the renames durable
stay with :class:`~azaion_workloads.queue.durability.PendingDirectories`,
done before the offset is stored.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from azaion_workloads.fsutil import TEMP_PREFIX
from azaion_workloads.queue.durability import PendingDirectories, sync_filesystems

#: Threads issuing the batch's fsyncs; more than one lets the journal merge them.
FSYNC_WORKERS = 8


def _process_umask() -> int | None:
    """This process's umask, read without changing it (Linux); None when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


_UMASK = _process_umask()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Listings:
    """Which names the directories hold, each read with one listing, then kept by this process's own operations.

    For a process that is the only writer of the directories (the consumer
    and its annotation directories): a lookup is a set membership instead of
    a stat, and a Created message looks up some twenty paths. A file removed
    behind its back makes an operation on it fail (the consumer exits and
    starts again with fresh listings); a file added behind its back is not
    seen until then.
    """

    def __init__(self) -> None:
        self._names: dict[str, set[str]] = {}

    def _of(self, directory: str) -> set[str]:
        names = self._names.get(directory)
        if names is None:
            try:
                with os.scandir(directory) as entries:
                    names = {entry.name for entry in entries}
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            self._names[directory] = names
        return names

    def exists(self, path: str) -> bool:
        directory, name = os.path.split(path)
        return name in self._of(directory)

    def added(self, path: str) -> None:
        directory, name = os.path.split(path)
        if directory in self._names:
            self._names[directory].add(name)

    def removed(self, path: str) -> None:
        directory, name = os.path.split(path)
        if directory in self._names:
            self._names[directory].discard(name)

    def forget(self) -> None:
        """Read every directory again on its next lookup."""
        self._names.clear()


#: (source, destination): ``source`` renamed to ``destination``; with None, ``source`` unlinked.
_Operation = tuple[str, str | None]


@dataclass
class StagedTree:
    """File operations of one batch; paths are strings (this runs for every message)."""

    pending: PendingDirectories
    _operations: list[_Operation] = field(default_factory=list)
    #: Final path -> where its bytes are now (a temporary file, the path it is moved
    #: from), or None when the batch removed it. Paths not here are as on disk.
    _view: dict[str, str | None] = field(default_factory=dict)
    _temporary: list[str] = field(default_factory=list)
    #: A directory on each filesystem the batch's temporary files are on, by device.
    _devices: dict[int, str] = field(default_factory=dict)
    #: The device of each directory written to so far (one fstat per directory, not per file).
    _device_of: dict[str, int] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None
    #: With listings, what is on disk is looked up in them instead of stat'ed (see :class:`Listings`).
    listings: Listings | None = None

    def __len__(self) -> int:
        return len(self._operations)

    def _where(self, path: str) -> str | None:
        if path in self._view:
            return self._view[path]
        if self.listings is not None:
            return path if self.listings.exists(path) else None
        return path if os.path.exists(path) else None

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return self._where(os.fspath(path)) is not None

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        where = self._where(os.fspath(path))
        if where is None:
            raise FileNotFoundError(os.fspath(path))
        with open(where, "rb") as handle:
            return handle.read()

    def write(self, path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
        """Stage ``data`` as the new contents of ``path`` (under a temporary name until flush)."""
        final = os.fspath(path)
        directory = os.path.dirname(final)
        # A random name created exclusively (what mkstemp does, without its per-call overhead).
        temporary = os.path.join(directory, TEMP_PREFIX + os.urandom(8).hex())
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            written = 0
            with memoryview(data) as view:
                while written < len(view):
                    written += os.write(fd, view[written:])
            if _UMASK is None or mode & _UMASK:
                os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            device = self._device_of.get(directory)
            if device is None:
                device = self._device_of[directory] = os.fstat(fd).st_dev
            self._devices.setdefault(device, directory)
        except BaseException:
            os.unlink(temporary)
            raise
        finally:
            os.close(fd)
        self._temporary.append(temporary)
        self._operations.append((temporary, final))
        self._view[final] = temporary

    def move(self, source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> bool:
        """Stage a move; False when ``source`` does not exist (as the batch sees it)."""
        origin, target = os.fspath(source), os.fspath(destination)
        where = self._where(origin)
        if where is None:
            return False
        os.makedirs(os.path.dirname(target), exist_ok=True)
        self._operations.append((origin, target))
        self._view[target], self._view[origin] = where, None
        return True

    def remove(self, path: str | os.PathLike[str]) -> bool:
        """Stage a removal; False when there is nothing to remove."""
        target = os.fspath(path)
        if self._where(target) is None:
            return False
        self._operations.append((target, None))
        self._view[target] = None
        return True

    def flush(self) -> int:
        """Contents durable, then every operation in order; the number of operations done."""
        if not self._operations:
            return 0
        if self.pending.durability == "syncfs":
            sync_filesystems(self._devices)
        elif len(self._temporary) > 1:
            self._pool = self._pool or ThreadPoolExecutor(FSYNC_WORKERS, thread_name_prefix="fsync")
            list(self._pool.map(_fsync_file, self._temporary))
        elif self._temporary:
            _fsync_file(self._temporary[0])
        done = len(self._operations)
        try:
            for operation in self._operations:
                self._perform(operation)
        except BaseException:
            if self.listings is not None:
                self.listings.forget()  # what is on disk now is not known exactly
            raise
        self._operations.clear()
        self._view.clear()
        self._temporary.clear()
        self._devices.clear()
        return done

    def _perform(self, operation: _Operation) -> None:
        source, destination = operation
        listings = self.listings
        if destination is not None:
            os.replace(source, destination)
            self.pending.add(os.path.dirname(source), os.path.dirname(destination))
            if listings is not None:
                listings.removed(source)
                listings.added(destination)
            return
        try:
            os.unlink(source)
        except FileNotFoundError:
            return
        finally:
            if listings is not None:
                listings.removed(source)
        self.pending.add(os.path.dirname(source))
