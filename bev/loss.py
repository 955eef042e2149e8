"""Set-prediction loss of the 3D detection head: Hungarian matching, focal and L1 on every decoder layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from detr2d.criterion import sigmoid_focal_loss

from .assigner import HungarianAssigner3D
from .box_coder import BOX_SIZE, CODE_SIZE, encode_boxes

CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)


class DetectionLoss3D(nn.Module):
    """Focal classification + weighted L1 box-code loss after Hungarian matching, for every decoder layer.

    Per layer and sample the assigner matches queries to ground truths; unmatched queries are
    background (all-zero one-hot). ``loss_cls`` = focal sum / num_boxes; ``loss_bbox`` = sum over
    matched queries of code_weights * |code - encoded target| / num_boxes, num_boxes being the
    ground-truth boxes of the batch (averaged over processes, at least 1). Non-finite target entries
    (e.g. unknown velocity) get weight 0.

    The returned terms are unweighted: ``weight_dict`` holds ``cls_weight`` / ``reg_weight`` for each
    key and :meth:`weighted_total` is the loss to minimize. Keys: ``loss_cls``, ``loss_bbox`` for the
    last layer, ``d{i}.loss_cls``, ``d{i}.loss_bbox`` for the earlier layers i = 0 .. L-2.

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
        for prefix in [f"d{i}." for i in range(num_layers - 1)] + [""]:
            self.weight_dict[f"{prefix}loss_cls"] = cls_weight
            self.weight_dict[f"{prefix}loss_bbox"] = reg_weight

    @staticmethod
    def num_boxes(gt_labels: Sequence[torch.Tensor], device: torch.device) -> float:
        """Ground-truth boxes in the batch, averaged over processes under torch.distributed (at least 1)."""
        count = torch.tensor([float(sum(len(labels) for labels in gt_labels))], device=device)
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world = dist.get_world_size()
        return max(count.item() / world, 1.0)

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight_dict[k] * losses[k])``; every term must have a weight."""
        unweighted = sorted(set(losses) - set(self.weight_dict))
        if unweighted:
            raise ValueError(f"no weight for loss terms {unweighted} (does num_layers match the decoder?)")
        return sum(self.weight_dict[k] * v for k, v in losses.items())

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
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Args:
            cls_logits: (L, B, Q, C) logits of every decoder layer.
            box_code: (L, B, Q, 10) box code of every decoder layer.
            gt_boxes: B tensors (K_b, 9) lidar-frame [x, y, z, w, l, h, yaw, vx, vy] (centre z).
            gt_labels: B tensors (K_b,) int64 in [0, C).

        Returns:
            the unweighted loss terms (see the class docstring for the keys).
        """
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
        batch = cls_logits.shape[1]
        if len(gt_boxes) != batch or len(gt_labels) != batch:
            raise ValueError(
                f"expected {batch} gt_boxes and gt_labels, got {len(gt_boxes)} and {len(gt_labels)}"
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
        gt_codes = [encode_boxes(boxes.to(box_code.dtype)) for boxes in gt_boxes]
        num_boxes = self.num_boxes(gt_labels, box_code.device)
        losses: dict[str, torch.Tensor] = {}
        for layer in range(self.num_layers):
            prefix = "" if layer == self.num_layers - 1 else f"d{layer}."
            loss_cls, loss_bbox = self.layer_losses(
                cls_logits[layer], box_code[layer], gt_codes, gt_labels, num_boxes
            )
            losses[f"{prefix}loss_cls"] = loss_cls
            losses[f"{prefix}loss_bbox"] = loss_bbox
        return losses
