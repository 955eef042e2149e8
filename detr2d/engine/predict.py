"""Run a checkpoint on image files and write the images with their detections drawn, plus a JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from datasets.coco import coco_paths
from datasets.collate import pad_images
from datasets.transforms import build_transforms
from detr2d import load_checkpoint

from .build import build_detector
from .checkpoint import atomic_write
from .evaluate import autocast
from .visualize import draw_detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders expanded to their images (sorted).

    Raises:
        FileNotFoundError: an input does not exist, or nothing to process was found.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not paths:
        raise FileNotFoundError(f"no image files in {[str(i) for i in inputs]}")
    return paths


def category_names(config: dict[str, Any]) -> dict[int, str]:
    """Category id → name from the config's val annotation file ({} when that file is absent)."""
    ann_file = coco_paths(config["data"]["root"], config["data"]["val_split"])[1]
    if not ann_file.is_file():
        return {}
    with open(ann_file) as f:
        return {cat["id"]: cat["name"] for cat in json.load(f)["categories"]}


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; ``ValueError`` naming the file when it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image file {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@torch.no_grad()
def run_predict(
    config: dict[str, Any],
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    score_threshold: float = 0.5,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Detect objects in every input image with the config's eval resize.

    Writes ``out_dir/<image stem>.png`` (detections with score ≥ ``score_threshold`` drawn with class
    names from the config's annotation file) and ``out_dir/predictions.json``: one record per image,
    ``{"file", "output", "detections": [{"category_id", "category", "score", "bbox" (x1, y1, x2, y2
    pixels)}]}``. ``limit`` keeps only the first N images. An input file is never overwritten.

    Returns:
        The records of ``predictions.json``.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, postprocess = build_detector(config, device)
    load_checkpoint(model, checkpoint, strict=True)
    model.eval()
    names = category_names(config)
    augment = config["augment"]
    transform = build_transforms(False, eval_size=augment["eval_size"], max_size=augment["max_size"])
    paths = list_images(inputs)[:limit]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, used = [], set()
    inputs_resolved = {p.resolve() for p in paths}
    for path in paths:
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        out_path = out_dir / f"{stem}.png"
        if out_path.resolve() in inputs_resolved:
            raise FileExistsError(f"{out_path} is an input image; choose an --out folder without inputs")
        image = read_rgb(path)
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
        tensor, _ = transform(image, empty, np.random.default_rng(0))
        batch, mask = pad_images([tensor])
        with autocast(device, config["train"]["amp"]):
            outputs = model(batch.to(device), mask.to(device))
        result = postprocess(outputs, torch.tensor([image.shape[:2]], device=device))[0]
        keep = result["scores"] >= score_threshold
        if names:
            keep &= torch.isin(result["labels"], torch.tensor(sorted(names), device=device))
        scores, labels = result["scores"][keep].tolist(), result["labels"][keep].tolist()
        boxes = result["boxes"][keep].float().cpu().tolist()
        drawn = draw_detections(image, boxes, labels, scores, names)
        ok, png = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"cannot encode {out_path}")
        atomic_write(out_path, lambda f, png=png: f.write(png.tobytes()))
        detections = [
            {"category_id": label, "category": names.get(label, str(label)), "score": score, "bbox": box}
            for score, label, box in zip(scores, labels, boxes, strict=True)
        ]
        records.append({"file": str(path), "output": str(out_path), "detections": detections})
        logger.info("%s: %d detections → %s", path, len(detections), out_path)
    atomic_write(out_dir / "predictions.json", lambda f: f.write(json.dumps(records, indent=1).encode()))
    return records
