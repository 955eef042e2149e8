"""Run a BEV checkpoint over nuScenes infos files and draw its detections: a bird's-eye view against
the ground truth and the six cameras with the predicted boxes projected, plus a JSON of the boxes."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.nuscenes import NuScenesMultiViewDataset, draw_bev, draw_camera_boxes
from datasets.nuscenes.dataset import IMAGENET_MEAN, IMAGENET_STD
from datasets.nuscenes.visualize import denormalize_images
from detr2d import load_checkpoint
from detr2d.engine.checkpoint import atomic_write

from .build import build_bev_detector
from .data import build_sequential_loader, prev_tokens
from .sequential import iterate_sequential

logger = logging.getLogger(__name__)


def draw_sample(
    batch: dict[str, Any], detections: dict[str, np.ndarray], score_threshold: float, out_dir: Path
) -> dict[str, Any]:
    """Write ``<token>_bev.png`` (ground truth green, predictions red) and ``<token>_cameras.jpg`` (the six
    cameras with the predictions in class colours) for one frame; returns its ``predictions.json`` record.

    Args:
        batch: a batch-size-1 ``collate_nuscenes`` batch (its last frame is drawn).
        detections: ``boxes`` (K, 9), ``scores`` (K,), ``labels`` (K,); those scoring at least
            ``score_threshold`` are drawn and recorded.
    """
    token = batch["sample_token"][0]
    keep = detections["scores"] >= score_threshold
    boxes, scores, labels = detections["boxes"][keep], detections["scores"][keep], detections["labels"][keep]
    bev_path, cameras_path = out_dir / f"{token}_bev.png", out_dir / f"{token}_cameras.jpg"
    draw_bev(batch["gt_boxes"][0].numpy(), boxes, bev_path)
    images = denormalize_images(batch["img"][0, -1].numpy(), IMAGENET_MEAN, IMAGENET_STD)
    draw_camera_boxes(images, batch["lidar2img"][0, -1].numpy(), boxes, labels, cameras_path)
    return {
        "sample_token": token,
        "bev": str(bev_path),
        "cameras": str(cameras_path),
        "boxes": boxes.tolist(),
        "scores": scores.tolist(),
        "labels": labels.tolist(),
    }


@torch.no_grad()
def run_bev_predict(
    config: dict[str, Any],
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    score_threshold: float = 0.3,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Detect and draw the samples of nuScenes infos files (``tools/create_data.py nuscenes``).

    Each file's scenes run through the sequential tester (previous BEV carried within a scene) at the
    config's image size; images are read from ``config["data"]["root"]``. Writes per sample
    ``<token>_bev.png`` and ``<token>_cameras.jpg`` (detections scoring at least ``score_threshold``)
    into ``out_dir``, and ``predictions.json``: one record per sample ``{"sample_token", "bev",
    "cameras", "boxes" (K x 9 lidar frame), "scores", "labels"}``. ``limit`` stops after N samples per file.

    Returns:
        The records of ``predictions.json``.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_bev_detector(config, device)
    load_checkpoint(model, checkpoint, strict=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for infos in inputs:
        dataset = NuScenesMultiViewDataset(
            infos, data_root=config["data"]["root"], image_size=tuple(config["data"]["image_size"])
        )
        loader = build_sequential_loader(dataset, num_workers=0, rank=0, world_size=1)
        frames = iterate_sequential(model, loader, prev_tokens(dataset), device, config["train"]["amp"])
        for count, (batch, detections) in enumerate(frames, start=1):
            records.append(draw_sample(batch, detections, score_threshold, out_dir))
            logger.info("%s: %d detections drawn", records[-1]["sample_token"], len(records[-1]["scores"]))
            if limit is not None and count >= limit:
                break
    atomic_write(out_dir / "predictions.json", lambda f: f.write(json.dumps(records, indent=1).encode()))
    return records
