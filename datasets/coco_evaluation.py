"""COCO bbox evaluation with pycocotools' ``COCOeval``: the 12 standard numbers and their table."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_metrics(
    coco_gt: COCO, detections: list[dict[str, Any]], image_ids: list[int]
) -> tuple[dict[str, float], str]:
    """Score COCO results entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) with
    ``COCOeval`` (bbox) on ``image_ids``.

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
                "annotations": [],
            }
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
