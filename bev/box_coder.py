"""The 10-d box code of BEVFormer / DETR3D and NMS-free decoding of the head's outputs into boxes.

Boxes (K, 9) are lidar-frame [x, y, z, w, l, h, yaw, vx, vy] with (x, y, z) the box centre in metres.
The code (K, 10) is [cx, cy, log w, log l, cz, log h, sin a, cos a, vx, vy]; its centre stays in
metres (the head maps its sigmoid centre outputs onto ``pc_range`` before they enter the code).

The coded angle ``a`` depends on ``yaw_frame``:

- ``"lidar"`` (BEVFormer, DETR3D): a = yaw, the heading in the lidar frame.
- ``"ray"``: a = yaw - atan2(y, x), the heading relative to the ray from the lidar origin to the box
  centre (the observation angle of monocular 3D detection). Which faces of an object a camera sees
  depends on this angle alone, so a head can read it off the appearance without first learning
  where the object lies; decoding adds the ray's azimuth of the predicted centre back.

and (vx, vy) on ``velocity_frame``:

- ``"lidar"`` (published): the velocity in the lidar frame.
- ``"box"``: the velocity in the box's own frame (along its heading, then to its left); objects move
  along their heading, so the code is mostly (speed, 0) whatever the direction of travel. Decoding
  rotates it back by the decoded yaw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .projection import check_pc_range

BOX_SIZE = 9
CODE_SIZE = 10
POST_CENTER_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
YAW_FRAMES = ("lidar", "ray")
VELOCITY_FRAMES = ("lidar", "box")


def check_yaw_frame(yaw_frame: str) -> str:
    """``yaw_frame`` if it is one of :data:`YAW_FRAMES`, else ValueError."""
    if yaw_frame not in YAW_FRAMES:
        raise ValueError(f"yaw_frame must be one of {YAW_FRAMES}, got {yaw_frame!r}")
    return yaw_frame


def check_velocity_frame(velocity_frame: str) -> str:
    """``velocity_frame`` if it is one of :data:`VELOCITY_FRAMES`, else ValueError."""
    if velocity_frame not in VELOCITY_FRAMES:
        raise ValueError(f"velocity_frame must be one of {VELOCITY_FRAMES}, got {velocity_frame!r}")
    return velocity_frame


def _rotate(vx: torch.Tensor, vy: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = angle.cos(), angle.sin()
    return cos * vx - sin * vy, sin * vx + cos * vy


def _ray_azimuth(x: torch.Tensor, y: torch.Tensor, yaw_frame: str) -> torch.Tensor | float:
    return torch.atan2(y, x) if check_yaw_frame(yaw_frame) == "ray" else 0.0


def encode_boxes(
    boxes: torch.Tensor, yaw_frame: str = "lidar", velocity_frame: str = "lidar"
) -> torch.Tensor:
    """(..., 9) boxes [x, y, z, w, l, h, yaw, vx, vy] -> (..., 10) code (frames: module docstring)."""
    if boxes.shape[-1] != BOX_SIZE:
        raise ValueError(
            f"boxes must end in {BOX_SIZE} values [x,y,z,w,l,h,yaw,vx,vy], got {tuple(boxes.shape)}"
        )
    x, y, z, w, l, h, yaw, vx, vy = boxes.unbind(-1)
    angle = yaw - _ray_azimuth(x, y, yaw_frame)
    if check_velocity_frame(velocity_frame) == "box":
        vx, vy = _rotate(vx, vy, -yaw)
    return torch.stack([x, y, w.log(), l.log(), z, h.log(), angle.sin(), angle.cos(), vx, vy], dim=-1)


def decode_boxes(code: torch.Tensor, yaw_frame: str = "lidar", velocity_frame: str = "lidar") -> torch.Tensor:
    """(..., 10) code -> (..., 9) boxes [x, y, z, w, l, h, yaw, vx, vy], yaw wrapped to [-pi, pi]."""
    if code.shape[-1] != CODE_SIZE:
        raise ValueError(f"code must end in {CODE_SIZE} values, got {tuple(code.shape)}")
    cx, cy, log_w, log_l, cz, log_h, sin, cos, vx, vy = code.unbind(-1)
    yaw = torch.atan2(sin, cos) + _ray_azimuth(cx, cy, yaw_frame)
    yaw = torch.atan2(yaw.sin(), yaw.cos())
    if check_velocity_frame(velocity_frame) == "box":
        vx, vy = _rotate(vx, vy, yaw)
    return torch.stack([cx, cy, cz, log_w.exp(), log_l.exp(), log_h.exp(), yaw, vx, vy], dim=-1)


class NMSFreeDecoder:
    """Top-k decoding without NMS (BEVFormer's ``NMSFreeCoder``).

    Scores are the sigmoid of the class logits; the ``max_num`` best (query, class) pairs over all
    queries x classes are kept, then those whose centre lies outside ``post_center_range`` (and,
    if set, scores below ``score_threshold``) are dropped.

    Args:
        num_classes: classes C of the logits.
        max_num: kept (query, class) pairs per sample (300).
        post_center_range: (x_min, y_min, z_min, x_max, y_max, z_max) for the box centres.
        score_threshold: minimum score, or None.
        yaw_frame, velocity_frame: the frames of the code's angle and velocity (module docstring).
    """

    def __init__(
        self,
        num_classes: int,
        max_num: int = 300,
        post_center_range: Sequence[float] = POST_CENTER_RANGE,
        score_threshold: float | None = None,
        yaw_frame: str = "lidar",
        velocity_frame: str = "lidar",
    ) -> None:
        self.yaw_frame = check_yaw_frame(yaw_frame)
        self.velocity_frame = check_velocity_frame(velocity_frame)
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
            boxes = decode_boxes(code[index // self.num_classes], self.yaw_frame, self.velocity_frame)
            keep = ((boxes[:, :3] >= low) & (boxes[:, :3] <= high)).all(dim=-1)
            if self.score_threshold is not None:
                keep &= scores > self.score_threshold
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results
