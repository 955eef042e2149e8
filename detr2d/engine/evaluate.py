"""COCO evaluation: run a model over a sharded loader, gather detections from every process and score
them with pycocotools ``COCOeval`` (bbox).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.data import DataLoader

from .distributed import all_gather_object, broadcast_object

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoEvalResult:
    """``metrics``: the 12 COCO numbers by name; ``table``: pycocotools' 12-line summary;
    ``detections``: the COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``),
    all processes' detections on the main process, this process's elsewhere; ``num_images``: images
    evaluated over all processes."""

    metrics: dict[str, float]
    table: str
    detections: list[dict[str, Any]]
    num_images: int


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """Mixed precision context: ``amp`` "bf16"/"fp16" on CUDA, nothing otherwise."""
    if amp is None or device.type != "cuda":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def predict_detections(
    model: nn.Module,
    postprocess: Callable[[dict[str, Any], torch.Tensor], list[dict[str, torch.Tensor]]],
    loader: DataLoader,
    device: torch.device,
    category_ids: set[int],
    amp: str | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Detections of ``model`` on every image of ``loader``, in original-image pixel coordinates.

    Labels that are not in ``category_ids`` (e.g. unused logits) are left out.

    Returns:
        The COCO results list and the ids of the images seen.
    """
    model.eval()
    detections: list[dict[str, Any]] = []
    image_ids: list[int] = []
    for images, mask, targets in loader:
        with autocast(device, amp):
            outputs = model(images.to(device), mask.to(device))
        orig_sizes = torch.stack([target["orig_size"] for target in targets]).to(device)
        for target, result in zip(targets, postprocess(outputs, orig_sizes), strict=True):
            image_id = int(target["image_id"])
            image_ids.append(image_id)
            boxes = result["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]
            for score, label, box in zip(
                result["scores"].tolist(), result["labels"].tolist(), boxes.tolist(), strict=True
            ):
                if label in category_ids:
                    detections.append(
                        {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
                    )
    return detections, image_ids


def coco_metrics(
    coco_gt: COCO, detections: list[dict[str, Any]], image_ids: list[int]
) -> tuple[dict[str, float], str]:
    """Score detections with ``COCOeval`` (bbox) on ``image_ids``.

    Returns:
        The 12 numbers by :data:`COCO_METRIC_NAMES` (−1 where undefined, as pycocotools reports) and the
        standard 12-line summary table.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])  # loadRes adds keys in place
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": coco_gt.dataset["images"],
                "categories": coco_gt.dataset["categories"],
            }
            coco_dt.dataset["annotations"] = []
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    metrics = dict(zip(COCO_METRIC_NAMES, (float(x) for x in evaluator.stats), strict=True))
    return metrics, table.getvalue().rstrip("\n")


def evaluate_coco(
    model: nn.Module,
    postprocess: Callable[[dict[str, Any], torch.Tensor], list[dict[str, torch.Tensor]]],
    loader: DataLoader,
    coco_gt: COCO,
    device: torch.device,
    is_main: bool,
    amp: str | None = None,
) -> CocoEvalResult:
    """Evaluate on the loader's shard on every process, gather, score on the main process, share.

    ``model`` must be the unwrapped model (not DDP): shards may differ in length by one batch, and a
    DDP forward is a collective.
    """
    detections, image_ids = predict_detections(model, postprocess, loader, device, set(coco_gt.cats), amp)
    gathered = all_gather_object((detections, image_ids))
    all_image_ids = [i for _, ids in gathered for i in ids]
    metrics, table = ({}, "")
    if is_main:
        detections = [d for dets, _ in gathered for d in dets]
        metrics, table = coco_metrics(coco_gt, detections, all_image_ids)
    metrics, table = broadcast_object((metrics, table))
    return CocoEvalResult(metrics, table, detections, len(all_image_ids))
