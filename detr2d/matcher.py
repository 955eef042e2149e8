"""Hungarian matching of predictions to targets (focal or softmax class cost, L1 and GIoU box costs)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

CLASS_COSTS = ("focal", "softmax")


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing ``w_class * class + w_bbox * L1 + w_giou * (-GIoU)``.

    The class cost (``class_cost``) is, at the target's class,

    - ``"focal"`` (Deformable DETR): the focal-loss difference of a positive and a negative label,
      ``alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))`` with ``p = sigmoid(logit)``;
    - ``"softmax"`` (DETR): ``-p`` with ``p`` the softmax over all logits ("no object" included).

    Args:
        cost_class: weight of the class cost.
        cost_bbox: weight of the L1 distance of (cx, cy, w, h) boxes.
        cost_giou: weight of the negative generalized IoU.
        focal_alpha: alpha of the focal cost.
        focal_gamma: gamma of the focal cost.
        class_cost: ``"focal"`` or ``"softmax"``.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_cost: str = "focal",
    ) -> None:
        super().__init__()
        if class_cost not in CLASS_COSTS:
            raise ValueError(f"class_cost must be one of {CLASS_COSTS}, got {class_cost!r}")
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_cost = class_cost

    def _class_cost(self, logits: Tensor, tgt_labels: Tensor) -> Tensor:
        """(Q, C) logits, (K,) labels -> (Q, K) class cost (see the class docstring)."""
        if self.class_cost == "softmax":
            return -logits.float().softmax(-1)[:, tgt_labels]
        prob = logits.float().sigmoid()
        a, g = self.focal_alpha, self.focal_gamma
        neg = (1 - a) * prob.pow(g) * -(1 - prob + 1e-8).log()
        pos = a * (1 - prob).pow(g) * -(prob + 1e-8).log()
        return (pos - neg)[:, tgt_labels]

    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor) -> Tensor:
        """Matching cost of one image.

        Args:
            logits: (Q, C) class logits.
            boxes: (Q, 4) predicted (cx, cy, w, h).
            tgt_labels: (K,) int64 labels.
            tgt_boxes: (K, 4) target (cx, cy, w, h).

        Returns:
            (Q, K) cost.
        """
        cost_class = self._class_cost(logits, tgt_labels)
        cost_bbox = torch.cdist(boxes.float(), tgt_boxes.float(), p=1)
        cost_giou = -generalized_box_iou(
            box_cxcywh_to_xyxy(boxes.float()), box_cxcywh_to_xyxy(tgt_boxes.float())
        )
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits`` (B, Q, C) and ``pred_boxes`` (B, Q, 4).
            targets: B dicts with ``labels`` (K_b,) int64 and ``boxes`` (K_b, 4) cxcywh.

        Returns:
            B pairs (prediction indices, target indices), int64 tensors of length min(Q, K_b); the
            i-th prediction is assigned to the i-th target.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {logits.shape[0]}")
        indices = []
        for b, tgt in enumerate(targets):
            if len(tgt["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b], boxes[b], tgt["labels"], tgt["boxes"]).cpu()
            if not bool(torch.isfinite(cost).all()):
                raise ValueError(
                    f"matching cost of image {b} is not finite (NaN/inf in predictions or targets)"
                )
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices
