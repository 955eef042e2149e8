"""Evaluate a checkpoint on a config's COCO val split (single process or under ``torchrun``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from detr2d import load_checkpoint

from .build import build_detector
from .checkpoint import atomic_write
from .data import build_dataset, build_eval_loader
from .distributed import init_distributed
from .evaluate import CocoEvalResult, evaluate_coco

logger = logging.getLogger(__name__)


def run_coco_test(
    config: dict[str, Any], checkpoint: str | Path, out_dir: str | Path | None = None
) -> CocoEvalResult:
    """Load ``checkpoint`` (ours, an official release file or a bare state_dict; strict key match) and
    evaluate it on the config's val split with pycocotools.

    With ``out_dir``, the main process writes ``metrics.json`` (the 12 numbers by name) and
    ``detections.json`` (COCO results format: ``image_id``, ``category_id``, ``bbox`` xywh,
    ``score``), each atomically.
    """
    info = init_distributed()
    model, _, postprocess = build_detector(config, info.device)
    load_checkpoint(model, checkpoint, strict=True)
    dataset = build_dataset(config, train=False)
    loader = build_eval_loader(
        dataset, config["train"]["eval_batch_size"], config["data"]["num_workers"], info.rank, info.world_size
    )
    result = evaluate_coco(
        model, postprocess, loader, dataset.coco, info.device, info.is_main, config["train"]["amp"]
    )
    if out_dir is not None and info.is_main:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in (("metrics.json", result.metrics), ("detections.json", result.detections)):
            atomic_write(out_dir / name, lambda f, content=content: f.write(json.dumps(content).encode()))
        logger.info("wrote %s and %s", out_dir / "metrics.json", out_dir / "detections.json")
    return result
