"""Box utilities: format conversions, (generalized) IoU, and box deltas in inverse-sigmoid space."""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) boxes (cx, cy, w, h) -> (..., 4) corners (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners (x0, y0, x1, y1) -> (..., 4) boxes (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou_and_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of broadcastable xyxy boxes ``a`` (..., 4) and ``b`` (..., 4)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter / union, union


def _giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalized IoU of broadcastable xyxy boxes: IoU - (hull - union) / hull."""
    iou, union = _iou_and_union(a, b)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


def _check_xyxy(name: str, boxes: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (K, 4), got {tuple(boxes.shape)}")
    # Degenerate boxes (x1 < x0) would give a negative area and a meaningless IoU.
    if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
        raise ValueError(f"{name} has boxes with x1 < x0 or y1 < y0 (expected xyxy corners)")


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of xyxy boxes (N, 4) and (M, 4) -> (N, M)."""
    _check_xyxy("boxes1", boxes1)
    _check_xyxy("boxes2", boxes2)
    return _iou_and_union(boxes1[:, None], boxes2[None])[0]


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of xyxy boxes (N, 4) and (M, 4) -> (N, M)."""
    _check_xyxy("boxes1", boxes1)
    _check_xyxy("boxes2", boxes2)
    return _giou(boxes1[:, None], boxes2[None])


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of corresponding xyxy boxes (K, 4) and (K, 4) -> (K,)."""
    _check_xyxy("boxes1", boxes1)
    _check_xyxy("boxes2", boxes2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(
            f"aligned boxes must have equal shapes, got {tuple(boxes1.shape)}, {tuple(boxes2.shape)}"
        )
    return _giou(boxes1, boxes2)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms clamped to at least ``eps``."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def apply_box_delta(delta: Tensor, reference: Tensor) -> Tensor:
    """Add a predicted delta to a reference in inverse-sigmoid space and map back to [0, 1].

    Args:
        delta: (..., 4) raw output of a box head.
        reference: (..., 4) reference boxes (cx, cy, w, h), or (..., 2) reference points (x, y), in
            [0, 1]. With 2-d references only the centre is offset; (w, h) come from ``delta`` alone.

    Returns:
        (..., 4) boxes (cx, cy, w, h) in [0, 1].
    """
    if reference.shape[-1] == 4:
        return (delta + inverse_sigmoid(reference)).sigmoid()
    if reference.shape[-1] == 2:
        return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], dim=-1).sigmoid()
    raise ValueError(f"reference must end in 2 or 4 coordinates, got {tuple(reference.shape)}")
