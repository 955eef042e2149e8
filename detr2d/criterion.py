"""Set criterion: focal (or softmax cross-entropy) class loss, L1 and GIoU box losses on every decoder
layer and proposal."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers.box_ops import aligned_generalized_box_iou, box_cxcywh_to_xyxy
from .layers.losses import sigmoid_focal_loss
from .matcher import HungarianMatcher
from .runtime.losses import Criterion, mean_box_count

LOSS_NAMES = ("loss_cls", "loss_bbox", "loss_giou")
CLASS_LOSSES = ("focal", "softmax")


def make_weight_dict(
    cls_loss_coef: float = 2.0,
    bbox_loss_coef: float = 5.0,
    giou_loss_coef: float = 2.0,
    decoder_layers: int = 6,
) -> dict[str, float]:
    """Weights of every loss key: the last layer, ``d{i}.`` for layer i < D - 1, ``enc.`` for proposals."""
    base = dict(zip(LOSS_NAMES, (cls_loss_coef, bbox_loss_coef, giou_loss_coef), strict=True))
    weights = dict(base)
    for prefix in [f"d{i}." for i in range(decoder_layers - 1)] + ["enc."]:
        weights.update({prefix + k: v for k, v in base.items()})
    return weights


def _check_targets(targets: list[dict], batch: int, num_classes: int) -> None:
    if not isinstance(targets, (list, tuple)) or len(targets) != batch:
        raise ValueError(
            f"targets must be a list of {batch} dicts, got {type(targets).__name__} of {len(targets)}"
        )
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise ValueError(f"target {i} needs 'labels' and 'boxes', has {sorted(t)}")
        labels, boxes = t["labels"], t["boxes"]
        if labels.dim() != 1 or labels.dtype != torch.int64:
            raise ValueError(
                f"target {i} labels must be a 1-d int64 tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if tuple(boxes.shape) != (labels.shape[0], 4):
            raise ValueError(
                f"target {i} boxes must have shape ({labels.shape[0]}, 4), got {tuple(boxes.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"target {i} labels must lie in [0, {num_classes}), got {labels.tolist()}")


class SetCriterion(Criterion):
    """Deformable DETR's training loss, or DETR's with ``class_loss="softmax"``.

    ``forward`` returns the RAW (unweighted) loss terms; :meth:`weighted_total` applies
    ``weight_dict``. Keys (:mod:`detr2d.runtime.losses`): ``loss_cls``, ``loss_bbox``, ``loss_giou`` for
    the last decoder layer, the same with prefix ``d{i}.`` for ``aux_outputs[i]`` and ``enc.`` for the
    two-stage proposals (matched to class-agnostic targets: every label 0), plus ``class_error`` (a
    0-100 log of the last layer, no gradient, not weighted). The box terms are normalized by the
    number of target boxes averaged over processes (at least 1).

    ``loss_cls`` depends on ``class_loss``:

    - ``"focal"`` (Deformable DETR): sigmoid focal loss over ``num_classes`` logits per query, matched
      queries with a one-hot target, the others all-zero; normalized by the number of target boxes;
    - ``"softmax"`` (DETR): cross-entropy over ``num_classes + 1`` logits per query, unmatched queries
      labelled "no object" (the last logit) and weighted ``eos_coef`` (the others 1); the weighted mean
      over queries, ``sum(w_i * nll_i) / sum(w_i)``, as the original.

    Args:
        num_classes: real classes (the labels' range); also the logits per query with ``"focal"``.
        matcher: the Hungarian matcher.
        weight_dict: weight of every loss key (see :func:`make_weight_dict`).
        focal_alpha: alpha of the focal loss.
        focal_gamma: gamma of the focal loss.
        class_loss: ``"focal"`` or ``"softmax"``.
        eos_coef: weight of the "no object" class in the ``"softmax"`` cross-entropy.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: dict[str, float],
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_loss: str = "focal",
        eos_coef: float = 0.1,
    ) -> None:
        super().__init__()
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"class_loss must be one of {CLASS_LOSSES}, got {class_loss!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.class_loss = class_loss
        self.num_logits = num_classes + 1 if class_loss == "softmax" else num_classes
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _class_loss(
        self, logits: Tensor, batch_idx: Tensor, src_idx: Tensor, labels: Tensor, num_boxes: float
    ) -> Tensor:
        """``loss_cls`` of (B, Q, C) ``logits`` whose queries ``(batch_idx, src_idx)`` are matched to
        ``labels`` (see the class docstring)."""
        if self.class_loss == "softmax":
            target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target[batch_idx, src_idx] = labels
            return F.cross_entropy(
                logits.float().transpose(1, 2), target, self.class_weight.to(logits.device)
            )
        onehot = torch.zeros_like(logits)
        onehot[batch_idx, src_idx, labels] = 1.0
        return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum() / num_boxes

    def layer_losses(
        self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        """``loss_cls``, ``loss_bbox``, ``loss_giou`` of one set of predictions given its matching.

        Args:
            outputs: ``pred_logits`` (B, Q, C), ``pred_boxes`` (B, Q, 4).
            targets: B dicts with ``labels`` (K_b,) and ``boxes`` (K_b, 4).
            indices: the matcher's B pairs (prediction indices, target indices).
            num_boxes: normalizer.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(device)
        src_idx = torch.cat([src for src, _ in indices]).to(device)
        tgt_labels = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices, strict=True)]
        )
        tgt_boxes = torch.cat(
            [t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, indices, strict=True)]
        )

        loss_cls = self._class_loss(logits, batch_idx, src_idx, tgt_labels.to(device), num_boxes)

        matched = boxes[batch_idx, src_idx]
        tgt_boxes = tgt_boxes.to(matched)
        loss_bbox = F.l1_loss(matched, tgt_boxes, reduction="none").sum() / num_boxes
        giou = aligned_generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(tgt_boxes))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """Raw loss terms of the model outputs (see the class docstring for the keys).

        Args:
            outputs: the model's output dict.
            targets: one dict per image: ``labels`` (K,) int64 in [0, num_classes) and ``boxes``
                (K, 4) normalized (cx, cy, w, h).
        """
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_logits:
            raise ValueError(
                f"pred_logits must have {self.num_logits} logits per query (num_classes={self.num_classes}, "
                f"class_loss={self.class_loss!r}), got shape {tuple(logits.shape)}"
            )
        _check_targets(targets, logits.shape[0], self.num_classes)
        num_boxes = mean_box_count(sum(len(t["labels"]) for t in targets), logits.device)

        indices = self.matcher(outputs, targets)
        losses = self.layer_losses(outputs, targets, indices, num_boxes)
        losses["class_error"] = self._class_error(logits, targets, indices)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self.layer_losses(aux, targets, self.matcher(aux, targets), num_boxes)
            losses.update({f"d{i}.{k}": v for k, v in aux_losses.items()})
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            enc_losses = self.layer_losses(enc, binary, self.matcher(enc, binary), num_boxes)
            losses.update({f"enc.{k}": v for k, v in enc_losses.items()})
        return losses

    @torch.no_grad()
    def _class_error(
        self, logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        """100 - top-1 accuracy (%) of the matched predictions (100 when nothing is matched)."""
        pred = torch.cat([logits[b, src.to(logits.device)].argmax(-1) for b, (src, _) in enumerate(indices)])
        tgt = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices, strict=True)]
        )
        if tgt.numel() == 0:
            return torch.tensor(100.0, device=logits.device)
        return 100.0 - (pred == tgt.to(pred.device)).float().mean() * 100.0
