"""Synthetic annotations: small images with drawn boxes and their YOLO labels.

For smoke tests of a deployment, the test suite and the benchmarks; the
boxes are filled rectangles, so even a tiny model learns something. The
module needs only the standard library and Pillow, so a pod of the training
image can run it from its source (:func:`synthetic_script`) without the
generator being part of the image.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

#: Kinds of broken annotations :func:`write_bad_annotations` produces, with the
#: start of the reason dataset formation gives for each.
BAD_KINDS: dict[str, str] = {
    "fields": "line 1: expected 5 fields",
    "class": "line 1: unknown class id",
    "centre": "line 1: centre",
    "size": "line 1: size",
    "number": "line 1: coordinates are not numbers",
    "image": "image not decodable",
    "no-image": "image missing",
    "no-label": "label missing",
}

_BAD_LABELS = {
    "fields": "0 0.5 0.5 0.2\n",
    "class": "17 0.5 0.5 0.2 0.2\n",
    "centre": "0 1.5 0.5 0.2 0.2\n",
    "size": "0 0.5 0.5 0.0 0.2\n",
    "number": "0 0.5 abc 0.2 0.2\n",
}


def make_image(rng: random.Random, size: int, boxes: list[tuple[int, float, float, float, float]]) -> bytes:
    from PIL import Image, ImageDraw

    background = tuple(rng.randrange(0, 60) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for class_id, cx, cy, w, h in boxes:
        colour = ((class_id * 97) % 256, (class_id * 57 + 128) % 256, 255 - (class_id * 31) % 256)
        draw.rectangle(
            [(cx - w / 2) * size, (cy - h / 2) * size, (cx + w / 2) * size, (cy + h / 2) * size],
            fill=colour,
        )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_annotations(
    data_dir: Path,
    count: int,
    seed: int = 0,
    size: int = 64,
    class_ids: tuple[int, ...] = (0, 1, 2, 20, 41),
    prefix: str = "img",
) -> list[str]:
    """Write ``count`` valid annotations into ``data_dir/{images,labels}``; return the names."""
    rng = random.Random(seed)
    (data_dir / "images").mkdir(parents=True, exist_ok=True)
    (data_dir / "labels").mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"{prefix}-{index:06d}"
        boxes = []
        for _ in range(rng.randint(1, 3)):
            w, h = rng.uniform(0.15, 0.4), rng.uniform(0.15, 0.4)
            cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
            boxes.append((rng.choice(class_ids), cx, cy, w, h))
        (data_dir / "images" / f"{name}.jpg").write_bytes(make_image(rng, size, boxes))
        (data_dir / "labels" / f"{name}.txt").write_text(
            "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes)
        )
        names.append(name)
    return names


def write_bad_annotations(data_dir: Path, size: int = 64) -> dict[str, str]:
    """One broken annotation of each kind in :data:`BAD_KINDS`; name -> kind."""
    rng = random.Random(1)
    good_image = make_image(rng, size, [(0, 0.5, 0.5, 0.3, 0.3)])
    written = {}
    for kind in BAD_KINDS:
        name = f"bad-{kind}"
        image = data_dir / "images" / f"{name}.jpg"
        label = data_dir / "labels" / f"{name}.txt"
        if kind in _BAD_LABELS:
            image.write_bytes(good_image)
            label.write_text(_BAD_LABELS[kind])
        elif kind == "image":
            image.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
            label.write_text("0 0.5 0.5 0.2 0.2\n")
        elif kind == "no-image":
            label.write_text("0 0.5 0.5 0.2 0.2\n")
        elif kind == "no-label":
            image.write_bytes(good_image)
        written[name] = kind
    return written


def synthetic_script(then: str) -> str:
    """Python source that defines this module's functions, then runs ``then`` (for ``python -c``)."""
    import inspect
    import sys

    return inspect.getsource(sys.modules[__name__]) + "\n" + then + "\n"
