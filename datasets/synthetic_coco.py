"""Write a small synthetic detection dataset in the real COCO layout.

Each image is a textured, noisy background with a few filled shapes (circle, square, triangle, cross,
...) of varied sizes and colors that may overlap (a shape drawn later occludes earlier ones; every
shape keeps at least half of its pixels visible). Annotations are the tight box of the visible pixels
(``bbox`` xywh), their pixel ``area`` and ``iscrowd`` 0, exactly like COCO's ``instances_*.json``, so
every tool that reads COCO reads this data. Generation is a pure function of its parameters.

Command line::

    python -m datasets.synthetic_coco OUT_DIR --num-train 2000 --num-val 200 --image-size 128 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
MANIFEST = "synthetic_coco.json"


@dataclass(frozen=True)
class SyntheticCocoSpec:
    """Parameters of a synthetic dataset (all sizes in pixels unless stated).

    Attributes:
        num_train: images in ``train2017``.
        num_val: images in ``val2017``.
        image_size: images are square, ``image_size`` × ``image_size``.
        num_classes: number of shape classes, the first ones of :data:`SHAPES` (category ids 1..N).
        max_objects: 1..max_objects shapes per image (uniform).
        min_scale: smallest shape extent as a fraction of the image size.
        max_scale: largest shape extent as a fraction of the image size.
        noise: standard deviation of the pixel noise (0-255 scale).
        seed: random seed; the dataset is a pure function of this spec.
    """

    num_train: int = 2000
    num_val: int = 200
    image_size: int = 128
    num_classes: int = 4
    max_objects: int = 4
    min_scale: float = 0.15
    max_scale: float = 0.45
    noise: float = 8.0
    seed: int = 0


def _shape_mask(name: str, size: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """(size, size) bool mask of shape ``name`` inscribed in the box (x, y, w, h)."""
    canvas = np.zeros((size, size), dtype=np.uint8)
    cx, cy = x + w // 2, y + h // 2
    if name == "circle":
        cv2.ellipse(canvas, (cx, cy), (w // 2, h // 2), 0, 0, 360, 1, -1)
    elif name == "square":
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), 1, -1)
    elif name == "triangle":
        cv2.fillPoly(canvas, [np.array([[cx, y], [x + w - 1, y + h - 1], [x, y + h - 1]], dtype=np.int32)], 1)
    elif name == "cross":
        tw, th = max(w // 3, 2), max(h // 3, 2)
        cv2.rectangle(canvas, (cx - tw // 2, y), (cx - tw // 2 + tw - 1, y + h - 1), 1, -1)
        cv2.rectangle(canvas, (x, cy - th // 2), (x + w - 1, cy - th // 2 + th - 1), 1, -1)
    elif name == "diamond":
        cv2.fillPoly(
            canvas, [np.array([[cx, y], [x + w - 1, cy], [cx, y + h - 1], [x, cy]], dtype=np.int32)], 1
        )
    elif name == "ring":
        cv2.ellipse(canvas, (cx, cy), (w // 2, h // 2), 0, 0, 360, 1, -1)
        cv2.ellipse(canvas, (cx, cy), (w // 4, h // 4), 0, 0, 360, 0, -1)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
    return canvas.astype(bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 background: a color gradient plus low-frequency blotches and stripes."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    start, end = rng.uniform(30, 225, size=(2, 3)).astype(np.float32)
    image = start + (end - start) * (gradient - gradient.min())[..., None] / max(np.ptp(gradient), 1e-6)
    blotches = cv2.resize(rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32), (size, size))
    period = rng.uniform(6, 24)
    stripes = 10 * np.sin(2 * np.pi * (ramp[None, :] * np.cos(angle + 1) + ramp[:, None]) * size / period)
    return image + blotches + stripes[..., None] * rng.uniform(0, 1)


def _color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A saturated RGB color at least 80 (Euclidean, 0-255) from the color ``avoid`` (3,)."""
    while True:
        hsv = np.array(
            [[[rng.uniform(0, 180), rng.uniform(120, 255), rng.uniform(110, 255)]]], dtype=np.float32
        )
        color = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        if np.linalg.norm(color - avoid) >= 80:
            return color


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two xyxy boxes (4,)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_image(
    spec: SyntheticCocoSpec, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image.

    Returns:
        The (S, S, 3) uint8 RGB image and its objects, each ``{"category_id", "bbox" [x, y, w, h],
        "area"}`` measured on the visible pixels.
    """
    size = spec.image_size
    image = _background(rng, size)
    masks: list[np.ndarray] = []
    categories: list[int] = []
    boxes: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        for _attempt in range(20):
            category = int(rng.integers(spec.num_classes)) + 1
            w = int(rng.uniform(spec.min_scale, spec.max_scale) * size)
            h = w if SHAPES[category - 1] in ("circle", "square") else int(w * rng.uniform(0.75, 1.33))
            h = min(max(h, 4), size)
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            mask = _shape_mask(SHAPES[category - 1], size, x, y, w, h)
            visible_after = [m & ~mask for m in masks]
            if all(_box_iou(box, b) < 0.4 for b in boxes) and all(
                v.sum() >= 0.5 * m.sum() for v, m in zip(visible_after, masks, strict=True)
            ):
                break
        else:
            continue
        local = image[mask].mean(axis=0)
        image[mask] = _color(rng, local) + rng.normal(0, 6, size=(int(mask.sum()), 3))
        masks = [*visible_after, mask]
        categories.append(category)
        boxes.append(box)
    image = cv2.GaussianBlur(image, (3, 3), 0.6) + rng.normal(0, spec.noise, size=image.shape)
    objects = []
    for category, mask in zip(categories, masks, strict=True):
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        objects.append(
            {
                "category_id": category,
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(mask.sum()),
            }
        )
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _write_split(
    spec: SyntheticCocoSpec, root: Path, split: str, num_images: int, first_id: int, rng: np.random.Generator
) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + num_images):
        image, objects = render_image(spec, rng)
        file_name = f"{image_id:012d}.jpg"
        if not cv2.imwrite(str(root / split / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {root / split / file_name}")
        images.append(
            {"id": image_id, "file_name": file_name, "height": spec.image_size, "width": spec.image_size}
        )
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0, **obj})
    categories = [
        {"id": i + 1, "name": name, "supercategory": "shape"}
        for i, name in enumerate(SHAPES[: spec.num_classes])
    ]
    (root / "annotations").mkdir(exist_ok=True)
    content = {
        "info": {"description": f"synthetic shapes ({split})", **asdict(spec)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    _atomic_write_json(root / "annotations" / f"instances_{split}.json", content)


def _atomic_write_json(path: Path, content: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(content, f)
    os.replace(tmp, path)


def generate_synthetic_coco(
    root: str | Path, spec: SyntheticCocoSpec, log: Callable[[str], None] = print
) -> Path:
    """Write ``spec``'s dataset under ``root`` (``train2017/``, ``val2017/``, ``annotations/``).

    Re-running with the same spec is a no-op (a manifest records it). A non-empty ``root`` written by
    something else, or by another spec, is never overwritten: that raises ``FileExistsError``.

    Returns:
        ``root`` as a Path.
    """
    if spec.num_classes > len(SHAPES):
        raise ValueError(f"num_classes must be ≤ {len(SHAPES)}, got {spec.num_classes}")
    root = Path(root)
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == asdict(spec):
        log(f"synthetic COCO dataset already present in {root}")
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and does not hold this synthetic dataset; choose another folder"
        )
    rng = np.random.default_rng(spec.seed)
    _write_split(spec, root, "train2017", spec.num_train, 1, rng)
    _write_split(spec, root, "val2017", spec.num_val, spec.num_train + 1, rng)
    _atomic_write_json(manifest, asdict(spec))
    log(f"wrote {spec.num_train} train and {spec.num_val} val synthetic images to {root}")
    return root


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    defaults = SyntheticCocoSpec()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="output folder (COCO layout)")
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    generate_synthetic_coco(args.pop("out"), SyntheticCocoSpec(**args))


if __name__ == "__main__":
    main()
