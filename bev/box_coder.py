"""The 10-d box code of BEVFormer / DETR3D and NMS-free decoding of the head's outputs into boxes.

Boxes (K, 9) are lidar-frame [x, y, z, w, l, h, yaw, vx, vy] with (x, y, z) the box centre in metres.
The code (K, 10) is [cx, cy, log w, log l, cz, log h, sin yaw, cos yaw, vx, vy]; its centre stays in
metres (the head maps its sigmoid centre outputs onto ``pc_range`` before they enter the code).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .projection import check_pc_range

BOX_SIZE = 9
CODE_SIZE = 10
#: The published L1 weights of the code entries (velocity down-weighted).
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def encode_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 9) boxes [x, y, z, w, l, h, yaw, vx, vy] -> (..., 10) code."""
    if boxes.shape[-1] != BOX_SIZE:
        raise ValueError(
            f"boxes must end in {BOX_SIZE} values [x,y,z,w,l,h,yaw,vx,vy], got {tuple(boxes.shape)}"
        )
    x, y, z, w, l, h, yaw, vx, vy = boxes.unbind(-1)
    return torch.stack([x, y, w.log(), l.log(), z, h.log(), yaw.sin(), yaw.cos(), vx, vy], dim=-1)


def decode_boxes(code: torch.Tensor) -> torch.Tensor:
    """(..., 10) code -> (..., 9) boxes [x, y, z, w, l, h, yaw, vx, vy] with yaw = atan2(sin, cos)."""
    if code.shape[-1] != CODE_SIZE:
        raise ValueError(f"code must end in {CODE_SIZE} values, got {tuple(code.shape)}")
    cx, cy, log_w, log_l, cz, log_h, sin, cos, vx, vy = code.unbind(-1)
    yaw = torch.atan2(sin, cos)
    return torch.stack([cx, cy, cz, log_w.exp(), log_l.exp(), log_h.exp(), yaw, vx, vy], dim=-1)


class NMSFreeDecoder:
    """Top-k decoding without NMS (BEVFormer's ``NMSFreeCoder``).

    Scores are the sigmoid of the class logits; the ``max_num`` best (query, class) pairs over all
    queries x classes are kept, then those whose centre lies outside ``post_center_range`` (and,
    if set, scores below ``score_threshold``) are dropped. Detections with a non-finite box or score are
    never dropped, so that broken weights reach the caller's check
    (:func:`detr2d.runtime.evaluate.check_finite`) instead of decoding to zero detections.

    Args:
        num_classes: classes C of the logits.
        max_num: kept (query, class) pairs per sample (300).
        post_center_range: (x_min, y_min, z_min, x_max, y_max, z_max) for the box centres.
        score_threshold: minimum score, or None.
    """

    def __init__(
        self,
        num_classes: int,
        max_num: int = 300,
        post_center_range: Sequence[float] = POST_CENTER_RANGE,
        score_threshold: float | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.max_num = max_num
        self.post_center_range = check_pc_range(post_center_range)
        self.score_threshold = score_threshold

    def decode(self, cls_logits: torch.Tensor, box_code: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Args:
            cls_logits: (B, Q, C) class logits of the last decoder layer.
            box_code: (B, Q, 10) box code of the last decoder layer.

        Returns:
            B dicts with ``boxes`` (K, 9) lidar frame, ``scores`` (K,) descending, ``labels`` (K,) int64.
        """
        if cls_logits.dim() != 3 or cls_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"cls_logits must have shape (B, Q, {self.num_classes}), got {tuple(cls_logits.shape)}"
            )
        if box_code.shape != (*cls_logits.shape[:2], CODE_SIZE):
            raise ValueError(
                f"box_code must have shape {(*cls_logits.shape[:2], CODE_SIZE)}, got {tuple(box_code.shape)}"
            )
        low = box_code.new_tensor(self.post_center_range[:3])
        high = box_code.new_tensor(self.post_center_range[3:])
        results = []
        for logits, code in zip(cls_logits, box_code, strict=True):
            k = min(self.max_num, logits.numel())
            scores, index = logits.sigmoid().flatten().topk(k)
            labels = index % self.num_classes
            boxes = decode_boxes(code[index // self.num_classes])
            keep = ((boxes[:, :3] >= low) & (boxes[:, :3] <= high)).all(dim=-1)
            if self.score_threshold is not None:
                keep &= scores > self.score_threshold
            # A NaN centre fails every range test: kept, the caller's non-finite check refuses it.
            keep |= ~(torch.isfinite(boxes).all(dim=-1) & torch.isfinite(scores))
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
