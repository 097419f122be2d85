"""The data root's layout, and the one place where outside names become paths.

Every name that comes from outside (a queue message, a TrainingRun spec) goes
through :func:`safe_child` or :func:`safe_name` before it touches the disk, so
nothing can escape the data root.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import azaion_contract as contract

# A file stem: no separators, no leading dot, no control characters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


class UnsafePathError(ValueError):
    """A name or path from outside would leave the data root."""


def safe_name(name: str) -> str:
    """Return ``name`` if it is a plain file name (no separators, no ``..``)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UnsafePathError(f"not a plain file name: {name!r}")
    return name


def safe_child(root: Path, relative: str | os.PathLike[str]) -> Path:
    """Resolve ``relative`` under ``root`` and refuse anything that leaves it.

    Absolute paths, ``..`` components and symlinks that point outside are all
    rejected; the returned path is absolute.
    """
    rel = Path(relative)
    if rel.is_absolute():
        raise UnsafePathError(f"absolute path not allowed: {str(relative)!r}")
    if any(part == ".." for part in rel.parts):
        raise UnsafePathError(f"'..' not allowed in path: {str(relative)!r}")
    root_resolved = root.resolve()
    candidate = (root_resolved / rel).resolve()
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise UnsafePathError(f"path leaves the data root: {str(relative)!r}")
    return candidate


@dataclass(frozen=True)
class DataLayout:
    """Directories under the data root (defaults as in the original system)."""

    root: Path
    data_dir: str = "data"
    seed_dir: str = "data-seed"
    deleted_dir: str = "data_deleted"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DataLayout:
        env = os.environ if env is None else env
        return cls(
            root=Path(env.get(contract.ENV_ROOT_DIR, contract.DEFAULT_ROOT_DIR)),
            data_dir=safe_name(env.get(contract.ENV_DATA_DIR, "data")),
            seed_dir=safe_name(env.get(contract.ENV_DATA_SEED_DIR, "data-seed")),
            deleted_dir=safe_name(env.get(contract.ENV_DATA_DELETED_DIR, "data_deleted")),
        )

    @property
    def data(self) -> Path:
        return self.root / self.data_dir

    @property
    def seed(self) -> Path:
        return self.root / self.seed_dir

    @property
    def deleted(self) -> Path:
        return self.root / self.deleted_dir

    @property
    def corrupted(self) -> Path:
        return self.root / "data-corrupted"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def classes_file(self) -> Path:
        return self.root / "classes.json"

    @property
    def current_model(self) -> Path:
        """The promoted model (``models/azaion.pt`` in the original layout)."""
        return self.models / "azaion.pt"

    def run_dir(self, namespace: str, name: str) -> Path:
        """One training run's output: unique per TrainingRun, unlike date names."""
        return self.models / safe_name(namespace) / safe_name(name)

    def dataset_dir(self, namespace: str, name: str) -> Path:
        return self.datasets / safe_name(namespace) / safe_name(name)

    def annotation_dirs(self) -> list[Path]:
        """Every images/labels directory the queue consumer writes to."""
        return [base / kind for base in (self.data, self.seed, self.deleted) for kind in ("images", "labels")]

    def ensure(self) -> None:
        """Create the tree when missing (idempotent)."""
        for directory in [*self.annotation_dirs(), self.corrupted, self.quarantine, self.datasets, self.models]:
            directory.mkdir(parents=True, exist_ok=True)
