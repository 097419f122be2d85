"""Dataset formation by hard links against copying every file (the original's way).

Builds one annotation store of N annotations (default 20,000), then forms the
same dataset twice from it, once linking and once copying, and prints the
times and their ratio: for the whole formation (validation included) and for
placing the files alone. Not a test: it prints figures.

    .venv/bin/python bench/dataset_formation.py [--count 20000] [--image-size 320]
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
from PIL import Image

from azaion_workloads.classes import ClassCatalog
from azaion_workloads.layout import DataLayout
from azaion_workloads.training.dataset import DatasetBuilder, place_file


def make_store(data: Path, count: int, size: int) -> int:
    """Annotations whose images are noisy JPEGs (realistic sizes); returns bytes written."""
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(32):  # a pool of distinct images, written round-robin: generation stays cheap
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        pool.append(buffer.getvalue())
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "labels").mkdir(parents=True, exist_ok=True)
    boxes = random.Random(0)
    total = 0
    for index in range(count):
        name = f"{index:08x}-0000-4000-8000-000000000000"
        image = pool[index % len(pool)]
        (data / "images" / f"{name}.jpg").write_bytes(image)
        label = "".join(
            f"{boxes.choice((0, 3, 21, 45))} {boxes.uniform(0.2, 0.8):.6f} {boxes.uniform(0.2, 0.8):.6f} 0.1 0.1\n"
            for _ in range(boxes.randint(1, 4))
        )
        (data / "labels" / f"{name}.txt").write_text(label)
        total += len(image) + len(label)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="azaion-bench-", dir=args.dir))
    try:
        layout = DataLayout(root=scratch)
        layout.ensure()
        started = time.perf_counter()
        size = make_store(layout.data, args.count, args.image_size)
        print(f"store: {args.count} annotations, {size / 1e6:.1f} MB, made in {time.perf_counter() - started:.1f}s")

        split = (Decimal("0.7"), Decimal("0.2"), Decimal("0.1"))
        timings = {}
        for mode in ("copy", "link"):
            builder = DatasetBuilder(
                layout, layout.dataset_dir("bench", mode), ClassCatalog.default(), split, 0, f"bench/{mode}", mode
            )
            started = time.perf_counter()
            manifest = builder.build()
            timings[mode] = time.perf_counter() - started
            assert sum(manifest.counts.values()) == args.count, manifest.counts
            print(
                f"form by {mode}: {timings[mode]:.2f}s "
                f"(linked {manifest.linked}, copied {manifest.copied}, quarantined {manifest.corrupted})"
            )

        # Placement alone, without validation: what linking saves on its own.
        files = sorted(layout.data.rglob("*.*"))
        placed = {}
        for mode in ("copy", "link"):
            target = scratch / f"place-{mode}"
            for kind in ("images", "labels"):
                (target / kind).mkdir(parents=True)
            started = time.perf_counter()
            for path in files:
                place_file(path, target / path.parent.name / path.name, mode)  # type: ignore[arg-type]
            placed[mode] = time.perf_counter() - started
            print(f"place {len(files)} files by {mode}: {placed[mode]:.2f}s")

        print(f"ratio copy/link, whole formation: {timings['copy'] / timings['link']:.2f}x")
        print(f"ratio copy/link, placing files:   {placed['copy'] / placed['link']:.2f}x")
        print(f"extra disk used by copying: {size / 1e6:.1f} MB; by linking: 0 MB (directory entries only)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
