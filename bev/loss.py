"""Set-prediction loss of the 3D detection head: Hungarian matching, focal and L1 on every decoder layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detr2d.layers.losses import sigmoid_focal_loss
from detr2d.runtime.losses import Criterion, layer_prefix, mean_box_count

from .assigner import HungarianAssigner3D
from .box_coder import BOX_SIZE, CODE_SIZE, CODE_WEIGHTS, encode_boxes
from .decoder import HeadOutput


class DetectionLoss3D(Criterion):
    """Focal classification + weighted L1 box-code loss after Hungarian matching, for every decoder layer.

    Per layer and sample the assigner matches queries to ground truths; unmatched queries are
    background (all-zero one-hot). ``loss_cls`` = focal sum / num_boxes; ``loss_bbox`` = sum over
    matched queries of code_weights * |code - encoded target| / num_boxes, num_boxes being the
    ground-truth boxes of the batch (averaged over processes, at least 1). Non-finite target entries
    (e.g. unknown velocity) get weight 0.

    The returned terms are unweighted: ``weight_dict`` holds ``cls_weight`` / ``reg_weight`` for each
    key and :meth:`weighted_total` is the loss to minimize. Keys (:mod:`detr2d.runtime.losses`):
    ``loss_cls``, ``loss_bbox`` for the last layer, ``d{i}.loss_cls``, ``d{i}.loss_bbox`` for the
    earlier layers i = 0 .. L-2. With Group DETR the outputs hold G query groups per sample (sample b's
    group g at b * G + g); each group is matched to the sample's ground truth independently.

    Args:
        num_classes: classes C.
        num_layers: decoder layers L.
        assigner: the matcher (default: focal 2.0 + L1 0.25 on the first 8 code entries).
        cls_weight: weight of the focal loss (2.0).
        reg_weight: weight of the L1 loss (0.25).
        code_weights: per-entry L1 weights of the 10-d code.
        alpha, gamma: focal parameters (0.25, 2.0).
    """

    def __init__(
        self,
        num_classes: int,
        num_layers: int,
        assigner: HungarianAssigner3D | None = None,
        cls_weight: float = 2.0,
        reg_weight: float = 0.25,
        code_weights: Sequence[float] = CODE_WEIGHTS,
        alpha: float = 0.25,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if len(code_weights) != CODE_SIZE:
            raise ValueError(f"code_weights must have {CODE_SIZE} entries, got {len(code_weights)}")
        self.num_classes = num_classes
        self.num_layers = num_layers
        self.assigner = assigner if assigner is not None else HungarianAssigner3D()
        self.alpha = alpha
        self.gamma = gamma
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.weight_dict: dict[str, float] = {}
        for prefix in [layer_prefix(i, num_layers) for i in range(num_layers)]:
            self.weight_dict[f"{prefix}loss_cls"] = cls_weight
            self.weight_dict[f"{prefix}loss_bbox"] = reg_weight

    def layer_losses(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_codes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
        num_boxes: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Focal and L1 losses of one decoder layer.

        Args:
            cls_logits: (B, Q, C); box_code: (B, Q, 10); gt_codes: B tensors (K_b, 10);
            gt_labels: B tensors (K_b,); num_boxes: normalizer.

        Returns:
            (loss_cls, loss_bbox) scalars.
        """
        targets = torch.zeros_like(cls_logits)
        l1 = cls_logits.new_zeros(())
        for b, (code, labels) in enumerate(zip(gt_codes, gt_labels, strict=True)):
            query_index, gt_index = self.assigner.assign(cls_logits[b], box_code[b], labels, code)
            targets[b, query_index, labels[gt_index]] = 1.0
            matched_target = code[gt_index]
            finite = torch.isfinite(matched_target)
            weights = self.code_weights.to(box_code.dtype) * finite
            error = (box_code[b, query_index] - torch.where(finite, matched_target, 0.0)).abs()
            l1 = l1 + (error * weights).sum()
        loss_cls = sigmoid_focal_loss(cls_logits, targets, self.alpha, self.gamma).sum() / num_boxes
        return loss_cls, l1 / num_boxes

    def forward(
        self, outputs: HeadOutput, targets: Mapping[str, Sequence[torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Args:
            outputs: ``cls_logits`` (L, B * G, Q, C) and ``box_code`` (L, B * G, Q, 10) of every decoder
                layer, G >= 1 query groups per sample.
            targets: ``gt_boxes``: B tensors (K_b, 9) lidar-frame [x, y, z, w, l, h, yaw, vx, vy] (centre
                z); ``gt_labels``: B tensors (K_b,) int64 in [0, C).

        Returns:
            the unweighted loss terms (see the class docstring for the keys).
        """
        cls_logits, box_code = outputs.cls_logits, outputs.box_code
        gt_boxes, gt_labels = targets["gt_boxes"], targets["gt_labels"]
        if (
            cls_logits.dim() != 4
            or cls_logits.shape[0] != self.num_layers
            or cls_logits.shape[-1] != self.num_classes
        ):
            raise ValueError(
                f"cls_logits must have shape ({self.num_layers}, B, Q, {self.num_classes}), "
                f"got {tuple(cls_logits.shape)}"
            )
        if box_code.shape != (*cls_logits.shape[:3], CODE_SIZE):
            raise ValueError(
                f"box_code must have shape {(*cls_logits.shape[:3], CODE_SIZE)}, got {tuple(box_code.shape)}"
            )
        if len(gt_boxes) != len(gt_labels) or not gt_boxes or cls_logits.shape[1] % len(gt_boxes):
            raise ValueError(
                f"expected as many gt_boxes as gt_labels, dividing the {cls_logits.shape[1]} predicted "
                f"samples (B x query groups); got {len(gt_boxes)} and {len(gt_labels)}"
            )
        for b, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
            if boxes.dim() != 2 or boxes.shape[1] != BOX_SIZE or labels.shape != (boxes.shape[0],):
                raise ValueError(
                    f"sample {b}: gt_boxes must be (K, {BOX_SIZE}) and gt_labels (K,), "
                    f"got {tuple(boxes.shape)} and {tuple(labels.shape)}"
                )
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"sample {b}: gt_labels must be in [0, {self.num_classes}), got {labels.tolist()}"
                )
        groups = cls_logits.shape[1] // len(gt_boxes)
        gt_codes = [encode_boxes(boxes.to(box_code.dtype)) for boxes in gt_boxes for _ in range(groups)]
        gt_labels = [labels for labels in gt_labels for _ in range(groups)]
        num_boxes = mean_box_count(sum(len(labels) for labels in gt_labels), box_code.device)
        losses: dict[str, torch.Tensor] = {}
        for layer in range(self.num_layers):
            prefix = layer_prefix(layer, self.num_layers)
            loss_cls, loss_bbox = self.layer_losses(
                cls_logits[layer], box_code[layer], gt_codes, gt_labels, num_boxes
            )
            losses[f"{prefix}loss_cls"] = loss_cls
            losses[f"{prefix}loss_bbox"] = loss_bbox
        return losses
