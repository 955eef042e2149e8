"""Post-processing: model outputs -> top-scoring (score, label, absolute xyxy box) per image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers.box_ops import box_cxcywh_to_xyxy


class PostProcess(nn.Module):
    """Top ``num_select`` (query, class) pairs by sigmoid score, boxes scaled to the image size.

    Args:
        num_select: detections kept per image (100 for COCO; fewer if Q * C is smaller).
    """

    def __init__(self, num_select: int = 100) -> None:
        super().__init__()
        if num_select < 1:
            raise ValueError(f"num_select must be positive, got {num_select}")
        self.num_select = num_select

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Convert raw outputs to detections.

        Args:
            outputs: ``pred_logits`` (B, Q, C) and ``pred_boxes`` (B, Q, 4) normalized cxcywh.
            target_sizes: (B, 2) rows (h, w): the original image size for evaluation, or the
                augmented size before padding for visualization.

        Returns:
            B dicts: ``scores`` (k,), ``labels`` (k,) int64 (class index = flat index % C) and
            ``boxes`` (k, 4) absolute (x0, y0, x1, y1), sorted by decreasing score.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        b, q, c = logits.shape
        if tuple(target_sizes.shape) != (b, 2):
            raise ValueError(
                f"target_sizes must have shape ({b}, 2) as (h, w), got {tuple(target_sizes.shape)}"
            )
        prob = logits.sigmoid().view(b, q * c)
        scores, flat = torch.topk(prob, min(self.num_select, q * c), dim=1)
        query = flat // c
        labels = flat % c
        xyxy = torch.gather(box_cxcywh_to_xyxy(boxes), 1, query[..., None].expand(-1, -1, 4))
        h, w = target_sizes.to(xyxy.dtype).unbind(1)
        xyxy = xyxy * torch.stack([w, h, w, h], dim=1)[:, None, :]
        return [
            {"scores": s, "labels": lab, "boxes": bx} for s, lab, bx in zip(scores, labels, xyxy, strict=True)
        ]
