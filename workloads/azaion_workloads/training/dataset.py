"""Dataset formation: validate annotations, quarantine bad ones, split, link.

Input is the validated annotation store (``data/images`` + ``data/labels``).
Pairs that fail validation are moved to ``data-corrupted/{images,labels}``
with one JSON line per pair in ``data-corrupted/reasons.jsonl``. The rest are
split reproducibly (a seeded shuffle of the sorted names) and hard-linked into
``datasets/<namespace>/<run>/{train,valid,test}/{images,labels}``; a copy is
made only where a link is impossible (another filesystem).

The dataset is assembled in a hidden staging directory and renamed into place
after its manifest is written, so a dataset directory with a manifest is
always complete, and a crash leaves only staging that the next try removes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from azaion_contract import IMAGE_EXTENSIONS
from azaion_contract.timefmt import rfc3339
from azaion_workloads.classes import NUM_CLASS_SLOTS, ClassCatalog
from azaion_workloads.fsutil import TEMP_PREFIX, atomic_write_bytes, durable_move, fsync_dir
from azaion_workloads.layout import DataLayout, UnsafePathError, safe_name
from azaion_workloads.training.errors import PermanentError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
DATA_YAML = "data.yaml"
REASONS_LOG = "reasons.jsonl"
PlaceMode = Literal["link", "copy"]
#: (annotation name, its files, reason)
Rejected = tuple[str, list[Path], str]


class DatasetManifest(BaseModel):
    """What a formed dataset holds; its hash names the exact file list."""

    model_config = ConfigDict(populate_by_name=True)

    version: int = 1
    run: str
    created_at: str = Field(alias="createdAt")
    seed: int
    split: tuple[str, str, str]
    counts: dict[str, int]
    corrupted: int
    linked: int
    copied: int
    file_list_sha256: str = Field(alias="fileListSha256")

    def dump(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True), indent=2, sort_keys=True).encode()


@dataclass(frozen=True)
class Annotation:
    name: str
    image: Path
    label: Path


def validate_label_text(text: str, valid_ids: frozenset[int]) -> str | None:
    """The reason a label file is invalid, or None. An empty file is a background image."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 5:
            return f"line {number}: expected 5 fields, got {len(fields)}"
        try:
            class_id = int(fields[0])
        except ValueError:
            return f"line {number}: class id {fields[0]!r} is not an integer"
        if class_id not in valid_ids:
            return f"line {number}: unknown class id {class_id}"
        try:
            cx, cy, w, h = (float(value) for value in fields[1:])
        except ValueError:
            return f"line {number}: coordinates are not numbers"
        if not all(map(_finite, (cx, cy, w, h))):
            return f"line {number}: coordinates are not finite"
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
            return f"line {number}: centre ({cx}, {cy}) outside [0, 1]"
        if not (0.0 < w <= 1.0 and 0.0 < h <= 1.0):
            return f"line {number}: size ({w}, {h}) not within (0, 1]"
    return None


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def check_image(path: Path) -> str | None:
    """The reason an image cannot be used, or None.

    JPEGs are decoded in draft mode (1/8 scale): every entropy-coded block is
    still read, at a fraction of the cost of a full decode.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            if image.width < 2 or image.height < 2:
                return f"image too small ({image.width}x{image.height})"
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises many kinds (decompression bombs included)
        return f"image not decodable: {type(error).__name__}: {error}"
    return None


def split_counts(total: int, fractions: Iterable[Decimal]) -> list[int]:
    """Largest-remainder split: exact (100 at 0.7/0.2/0.1 -> 70/20/10), sums to ``total``."""
    shares = [Decimal(total) * fraction for fraction in fractions]
    counts = [int(share.to_integral_value(rounding=ROUND_FLOOR)) for share in shares]
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def assign_splits(names: list[str], fractions: Iterable[Decimal], seed: int) -> dict[str, list[str]]:
    """Shuffle the sorted names with ``seed``: the same names and seed give the same split."""
    ordered = sorted(names)
    random.Random(seed).shuffle(ordered)
    counts = split_counts(len(ordered), fractions)
    result, start = {}, 0
    for split, count in zip(SPLITS, counts, strict=True):
        result[split] = sorted(ordered[start : start + count])
        start += count
    return result


def place_file(source: Path, destination: Path, mode: PlaceMode = "link") -> PlaceMode:
    """Hard-link ``source`` (or copy it when linking is impossible); return what was done."""
    if mode == "link":
        try:
            os.link(source, destination, follow_symlinks=False)
            return "link"
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copyfile(source, destination)
    return "copy"


class DatasetBuilder:
    """Forms one run's dataset from the layout's validated annotations."""

    def __init__(
        self,
        layout: DataLayout,
        dataset_dir: Path,
        catalog: ClassCatalog,
        fractions: tuple[Decimal, Decimal, Decimal],
        seed: int,
        run: str,
        place_mode: PlaceMode = "link",
        on_progress: Callable[[], None] | None = None,
        threads: int = 4,
    ) -> None:
        self.layout = layout
        self.dataset_dir = dataset_dir
        self.catalog = catalog
        self.fractions = fractions
        self.seed = seed
        self.run = run
        self.place_mode = place_mode
        self.on_progress = on_progress or (lambda: None)
        self.threads = threads
        self.staging = dataset_dir.parent / f".{dataset_dir.name}.partial"

    # The whole step -------------------------------------------------------

    def existing(self) -> DatasetManifest | None:
        path = self.dataset_dir / MANIFEST
        if not path.exists():
            return None
        return DatasetManifest.model_validate_json(path.read_bytes())

    def build(self) -> DatasetManifest:
        done = self.existing()
        if done is not None:
            log.info("dataset %s already formed; skipping", self.dataset_dir)
            return done
        if self.staging.exists():
            log.info("removing an unfinished dataset from an earlier try: %s", self.staging)
            shutil.rmtree(self.staging)
        annotations, rejected = self.scan()
        valid, more_rejected = self.validate(annotations)
        for name, files, reason in rejected + more_rejected:
            self.quarantine(name, files, reason)
        if len(valid) < 2:
            raise PermanentError(
                f"only {len(valid)} valid annotation(s) in {self.layout.data}; "
                "a dataset needs at least one for training and one for validation"
            )
        splits = assign_splits([a.name for a in valid], self.fractions, self.seed)
        by_name = {a.name: a for a in valid}
        placed = {"link": 0, "copy": 0}
        digest = hashlib.sha256()
        for split in SPLITS:
            images_dir = self.staging / split / "images"
            labels_dir = self.staging / split / "labels"
            images_dir.mkdir(parents=True)
            labels_dir.mkdir(parents=True)
            for name in splits[split]:
                item = by_name[name]
                for source, target_dir in ((item.image, images_dir), (item.label, labels_dir)):
                    placed[place_file(source, target_dir / source.name, self.place_mode)] += 1
                    digest.update(f"{split}/{target_dir.name}/{source.name}\n".encode())
                self.on_progress()
        self._write_data_yaml()
        manifest = DatasetManifest(
            run=self.run,
            createdAt=rfc3339(),
            seed=self.seed,
            split=tuple(str(f) for f in self.fractions),  # type: ignore[arg-type]
            counts={split: len(splits[split]) for split in SPLITS},
            corrupted=self._rejected_count(),
            linked=placed["link"],
            copied=placed["copy"],
            fileListSha256=digest.hexdigest(),
        )
        atomic_write_bytes(self.staging / MANIFEST, manifest.dump())
        self.dataset_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.staging, self.dataset_dir)
        fsync_dir(self.dataset_dir.parent)
        log.info(
            "dataset formed: %s train / %s valid / %s test, %s quarantined",
            *(manifest.counts[s] for s in SPLITS),
            manifest.corrupted,
        )
        return manifest

    # Pieces ----------------------------------------------------------------

    def scan(self) -> tuple[list[Annotation], list[Rejected]]:
        """Pair images with labels by file stem; anything unpaired is rejected."""
        images: dict[str, list[Path]] = {}
        labels: dict[str, Path] = {}
        rejected: list[Rejected] = []
        for entry in _entries(self.layout.data / "images"):
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in IMAGE_EXTENSIONS:
                images.setdefault(stem, []).append(Path(entry.path))
            else:
                rejected.append((entry.name, [Path(entry.path)], "not an image file"))
        for entry in _entries(self.layout.data / "labels"):
            stem, ext = os.path.splitext(entry.name)
            if ext == ".txt":
                labels[stem] = Path(entry.path)
            else:
                rejected.append((entry.name, [Path(entry.path)], "not a label file (.txt)"))
        annotations = []
        for stem in sorted(set(images) | set(labels)):
            found = images.get(stem, [])
            files = [*found, *([labels[stem]] if stem in labels else [])]
            try:
                safe_name(stem)
            except UnsafePathError:
                rejected.append((stem, files, "unsafe file name"))
                continue
            if len(found) > 1:
                rejected.append((stem, files, "several images share this name"))
            elif not found:
                rejected.append((stem, files, "image missing"))
            elif stem not in labels:
                rejected.append((stem, files, "label missing"))
            else:
                annotations.append(Annotation(stem, found[0], labels[stem]))
        return annotations, rejected

    def validate(self, annotations: list[Annotation]) -> tuple[list[Annotation], list[Rejected]]:
        valid_ids = self.catalog.valid_ids()

        def check(item: Annotation) -> str | None:
            for path in (item.image, item.label):
                if path.is_symlink() or not path.is_file():
                    return f"{path.name} is not a regular file"
            try:
                text = item.label.read_text(encoding="utf-8-sig")  # a BOM from Windows tools is fine
            except (OSError, UnicodeDecodeError) as error:
                return f"label unreadable: {error}"
            return validate_label_text(text, valid_ids) or check_image(item.image)

        valid: list[Annotation] = []
        rejected: list[Rejected] = []
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for item, reason in zip(annotations, pool.map(check, annotations), strict=True):
                self.on_progress()
                if reason is None:
                    valid.append(item)
                else:
                    rejected.append((item.name, [item.image, item.label], reason))
        return valid, rejected

    def quarantine(self, name: str, files: list[Path], reason: str) -> None:
        """Move the annotation's files to the corrupted folder; log why.

        ``files`` come from a directory listing of ``data/``: their names hold
        no separators, so the destinations stay inside the corrupted folder.
        """
        corrupted = self.layout.corrupted
        moved = []
        for path in files:
            kind = path.parent.name
            if durable_move(path, corrupted / kind / path.name):
                moved.append(f"{kind}/{path.name}")
        record = {
            "name": name,
            "reason": reason,
            "run": self.run,
            "files": moved,
            "at": rfc3339(),
        }
        log.warning("quarantined %s: %s", name, reason)
        corrupted.mkdir(parents=True, exist_ok=True)
        with (corrupted / REASONS_LOG).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _rejected_count(self) -> int:
        path = self.layout.corrupted / REASONS_LOG
        if not path.exists():
            return 0
        names = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("run") == self.run:
                names.add(record.get("name"))
        return len(names)

    def _write_data_yaml(self) -> None:
        slots = self.catalog.slot_names()
        document = {
            # The final location: the staging directory is renamed to it.
            "path": str(self.dataset_dir),
            "train": "train/images",
            "val": "valid/images",
            "test": "test/images",
            "nc": NUM_CLASS_SLOTS,
            "names": {slot: slots[slot] for slot in range(NUM_CLASS_SLOTS)},
        }
        atomic_write_bytes(self.staging / DATA_YAML, yaml.safe_dump(document, sort_keys=False).encode())


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    """Directory entries, skipping hidden names (in-flight temporary files of writers)."""
    try:
        with os.scandir(directory) as scan:
            return sorted(
                (e for e in scan if not e.name.startswith(".") and not e.name.startswith(TEMP_PREFIX)),
                key=lambda e: e.name,
            )
    except FileNotFoundError:
        return []
