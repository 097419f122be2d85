"""Dataset formation: validation, quarantine with reasons, exact seeded splits, links."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from azaion_devtools.synthetic import BAD_KINDS, write_annotations, write_bad_annotations
from azaion_workloads.classes import ClassCatalog
from azaion_workloads.layout import DataLayout
from azaion_workloads.training import dataset as ds
from azaion_workloads.training.errors import PermanentError

pytestmark = pytest.mark.unit

SPLIT = (Decimal("0.7"), Decimal("0.2"), Decimal("0.1"))


def _builder(root: Path, name: str = "run", seed: int = 0, **kwargs) -> ds.DatasetBuilder:
    layout = DataLayout(root=root)
    layout.ensure()
    return ds.DatasetBuilder(
        layout, layout.dataset_dir("ns", name), ClassCatalog.default(), SPLIT, seed, f"ns/{name}", **kwargs
    )


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def test_hundred_annotations_split_exactly_70_20_10(tmp_path: Path) -> None:
    write_annotations(tmp_path / "data", 100, size=16)
    manifest = _builder(tmp_path).build()
    assert manifest.counts == {"train": 70, "valid": 20, "test": 10}
    target = tmp_path / "datasets" / "ns" / "run"
    for split, count in manifest.counts.items():
        assert len(list((target / split / "images").iterdir())) == count
        assert len(list((target / split / "labels").iterdir())) == count


@pytest.mark.parametrize("total", [2, 3, 7, 10, 11, 99, 101, 1000])
def test_split_counts_sum_and_are_exact(total: int) -> None:
    counts = ds.split_counts(total, SPLIT)
    assert sum(counts) == total
    for count, fraction in zip(counts, SPLIT, strict=True):
        assert abs(count - total * float(fraction)) < 1


def test_same_seed_same_split_and_other_seed_differs() -> None:
    names = [f"n{i:03d}" for i in range(50)]
    first = ds.assign_splits(names, SPLIT, seed=7)
    assert first == ds.assign_splits(list(reversed(names)), SPLIT, seed=7)
    assert first != ds.assign_splits(names, SPLIT, seed=8)
    assert sorted(n for part in first.values() for n in part) == names


def test_same_seed_gives_same_dataset_manifest(tmp_path: Path) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        write_annotations(root / "data", 30, size=16)
    hashes = [_builder(root, seed=3).build().file_list_sha256 for root in roots]
    assert hashes[0] == hashes[1]


def test_every_bad_label_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    good = write_annotations(tmp_path / "data", 10, size=16)
    bad = write_bad_annotations(tmp_path / "data", size=16)
    manifest = _builder(tmp_path).build()

    assert sum(manifest.counts.values()) == len(good)
    assert manifest.corrupted == len(bad)
    records = [json.loads(line) for line in (tmp_path / "data-corrupted" / "reasons.jsonl").read_text().splitlines()]
    reasons = {r["name"]: r["reason"] for r in records}
    for name, kind in bad.items():
        assert reasons[name].startswith(BAD_KINDS[kind]), (name, reasons[name])
    # The broken pairs left data/ and sit in data-corrupted/, nothing else moved.
    corrupted = _files(tmp_path / "data-corrupted")
    assert "images/bad-image.jpg" in corrupted and "labels/bad-image.txt" in corrupted
    assert "labels/bad-no-image.txt" in corrupted and "images/bad-no-label.jpg" in corrupted
    remaining = _files(tmp_path / "data")
    assert not any("bad-" in name for name in remaining)
    assert len(remaining) == 2 * len(good)


def test_files_are_hard_links_and_data_yaml_has_80_slots(tmp_path: Path) -> None:
    write_annotations(tmp_path / "data", 10, size=16)
    _builder(tmp_path).build()
    target = tmp_path / "datasets" / "ns" / "run"
    linked = next((target / "train" / "images").iterdir())
    original = tmp_path / "data" / "images" / linked.name
    assert os.path.samefile(linked, original)
    document = yaml.safe_load((target / "data.yaml").read_text())
    assert document["nc"] == 80 and len(document["names"]) == 80
    assert document["names"][20] == "ArmorVehicle(Wint)"
    assert document["names"][41] == "Truck(Night)"
    assert document["names"][17] == "Class-17"
    assert document["path"] == str(target)
    assert document["val"] == "valid/images"


def test_copy_fallback_when_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_annotations(tmp_path / "data", 10, size=16)

    def cross_device(*_args: object, **_kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(ds.os, "link", cross_device)
    manifest = _builder(tmp_path).build()
    assert manifest.linked == 0 and manifest.copied == 20


def test_second_build_is_a_no_op_and_staging_is_cleaned(tmp_path: Path) -> None:
    write_annotations(tmp_path / "data", 10, size=16)
    builder = _builder(tmp_path)
    builder.staging.mkdir(parents=True)
    (builder.staging / "junk").write_text("from a crashed try")
    first = builder.build()
    assert not builder.staging.exists()
    write_annotations(tmp_path / "data", 5, size=16, prefix="later")
    assert builder.build() == first


def test_hidden_and_temporary_files_are_ignored(tmp_path: Path) -> None:
    write_annotations(tmp_path / "data", 5, size=16)
    (tmp_path / "data" / "images" / ".azaion-tmp-abc").write_bytes(b"in flight")
    (tmp_path / "data" / "labels" / ".hidden.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    manifest = _builder(tmp_path).build()
    assert sum(manifest.counts.values()) == 5 and manifest.corrupted == 0
    assert (tmp_path / "data" / "images" / ".azaion-tmp-abc").exists()


def test_unsafe_names_and_symlinks_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(b"not yours")
    write_annotations(root / "data", 5, size=16)
    images, labels = root / "data" / "images", root / "data" / "labels"
    (images / "evil.jpg").symlink_to(secret)
    (labels / "evil.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (images / "a..b.jpg").write_bytes((images / "img-000000.jpg").read_bytes())
    (labels / "a..b.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    before_outside = _files(outside)

    manifest = _builder(root).build()

    assert sum(manifest.counts.values()) == 5
    assert _files(outside) == before_outside and secret.read_bytes() == b"not yours"
    reasons = {
        json.loads(line)["name"]: json.loads(line)["reason"]
        for line in (root / "data-corrupted" / "reasons.jsonl").read_text().splitlines()
    }
    assert reasons["evil"] == "evil.jpg is not a regular file"
    assert reasons["a..b"] == "unsafe file name"
    dataset_files = _files(root / "datasets")
    assert not any("evil" in f or "a..b" in f for f in dataset_files)


def test_too_few_valid_annotations_is_permanent(tmp_path: Path) -> None:
    write_annotations(tmp_path / "data", 1, size=16)
    with pytest.raises(PermanentError, match="only 1 valid"):
        _builder(tmp_path).build()
    assert not (tmp_path / "datasets" / "ns" / "run").exists()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0 0.5 0.5 0.2 0.2", None),
        ("56 0 1 1 1", None),
        ("", None),
        ("0 0.5 0.5 0.2", "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 fields"),
        ("1.5 0.5 0.5 0.2 0.2", "is not an integer"),
        ("17 0.5 0.5 0.2 0.2", "unknown class id 17"),
        ("60 0.5 0.5 0.2 0.2", "unknown class id 60"),
        ("-1 0.5 0.5 0.2 0.2", "unknown class id -1"),
        ("0 1.0001 0.5 0.2 0.2", "centre"),
        ("0 0.5 -0.1 0.2 0.2", "centre"),
        ("0 0.5 0.5 0 0.2", "size"),
        ("0 0.5 0.5 0.2 1.2", "size"),
        ("0 0.5 0.5 -0.2 0.2", "size"),
        ("0 nan 0.5 0.2 0.2", "not finite"),
        ("0 0.5 0.5 x 0.2", "not numbers"),
    ],
)
def test_label_rules(line: str, reason: str | None) -> None:
    result = ds.validate_label_text(line + "\n", ClassCatalog.default().valid_ids())
    if reason is None:
        assert result is None
    else:
        assert result is not None and reason in result


def test_a_stop_in_the_middle_leaves_nothing_half_formed(tmp_path: Path) -> None:
    from azaion_workloads.training.errors import Interrupted

    write_annotations(tmp_path / "data", 20, size=16)
    calls = 0

    def stop_soon() -> None:
        nonlocal calls
        calls += 1
        if calls > 25:  # past validation, in the middle of placing files
            raise Interrupted("SIGTERM")

    builder = _builder(tmp_path, on_progress=stop_soon)
    with pytest.raises(Interrupted):
        builder.build()
    assert not builder.dataset_dir.exists() and builder.staging.exists()
    manifest = _builder(tmp_path).build()
    assert sum(manifest.counts.values()) == 20
    assert not builder.staging.exists()


def test_tiff_images_the_consumer_writes_are_formed_not_quarantined(tmp_path: Path) -> None:
    from PIL import Image

    from azaion_contract import IMAGE_EXTENSIONS
    from azaion_workloads.queue import wire

    write_annotations(tmp_path / "data", 9, size=16)
    for extension in (".tif", ".tiff"):
        stem = f"scan-{extension[1:]}"
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "data" / "images" / f"{stem}{extension}")
        (tmp_path / "data" / "labels" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    manifest = _builder(tmp_path).build()
    assert sum(manifest.counts.values()) == 11, "both TIFF annotations are in the dataset"
    assert manifest.corrupted == 0
    assert ".tif" in IMAGE_EXTENSIONS and wire.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
