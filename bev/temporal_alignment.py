"""Bring the previous frame's BEV into the current frame: the published rotation + shift, or our planar warp.

Published (BEVFormer v1, ``temporal_alignment="published"``): the 18-d CAN-bus vector of a frame carries
the ego translation since the previous frame in ``can_bus[:3]`` (global frame), the absolute ego yaw in
radians in ``can_bus[16]`` and the yaw change since the previous frame in degrees in ``can_bus[17]``
(:func:`published_can_bus` makes it from the absolute vectors the dataset stores). The previous BEV is
rotated by the yaw change about ``rotate_center`` (:func:`rotate_bev`, torchvision's nearest-neighbour
``rotate``), and the translation becomes a shift of the history entry's reference points in normalized
BEV units (:func:`bev_shift`).

Ours (``"planar"``): :func:`align_prev_bev` resamples the previous BEV by the full planar motion between
the two lidar frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .projection import bev_cell_centers, check_pc_range

CAN_BUS_DIM = 18
#: Indices of the CAN-bus vector that BEVFormer turns into differences with the previous frame.
CAN_BUS_DELTA = (0, 1, 2, 17)
YAW_RADIANS = 16
YAW_DELTA_DEGREES = 17


def _check_can_bus(can_bus: torch.Tensor, name: str = "can_bus") -> None:
    if can_bus.dim() != 2 or can_bus.shape[-1] != CAN_BUS_DIM:
        raise ValueError(f"{name} must have shape (B, {CAN_BUS_DIM}), got {tuple(can_bus.shape)}")


def published_can_bus(
    can_bus: torch.Tensor,
    prev_can_bus: torch.Tensor | None = None,
    prev_exists: torch.Tensor | None = None,
) -> torch.Tensor:
    """BEVFormer's per-frame CAN-bus input from absolute vectors (``datasets.nuscenes.can_bus`` layout).

    ``can_bus[:3]`` (ego position) and ``can_bus[17]`` (yaw, degrees) become the differences with the
    previous frame; they are 0 where there is no previous frame (a scene start), as in BEVFormer's
    ``union2one`` and ``forward_test``. The other entries (rotation, accel, rates, velocity, yaw in
    radians) stay absolute.

    Args:
        can_bus: (B, 18) absolute vectors of this frame.
        prev_can_bus: (B, 18) absolute vectors of the previous frame, or None (no previous frame).
        prev_exists: (B,) bool, which samples have a previous frame (default: all, when
            ``prev_can_bus`` is given).

    Returns:
        (B, 18) in the dtype of ``can_bus`` (differences taken in float64).
    """
    _check_can_bus(can_bus)
    result = can_bus.to(torch.float64).clone()
    index = torch.tensor(CAN_BUS_DELTA, device=can_bus.device)
    if prev_can_bus is None:
        result[:, index] = 0.0
        return result.to(can_bus.dtype)
    _check_can_bus(prev_can_bus, "prev_can_bus")
    if prev_can_bus.shape != can_bus.shape:
        raise ValueError(
            f"prev_can_bus must have shape {tuple(can_bus.shape)}, got {tuple(prev_can_bus.shape)}"
        )
    delta = result[:, index] - prev_can_bus.to(torch.float64)[:, index]
    if prev_exists is not None:
        if prev_exists.shape != can_bus.shape[:1]:
            raise ValueError(
                f"prev_exists must have shape ({can_bus.shape[0]},), got {tuple(prev_exists.shape)}"
            )
        delta = torch.where(prev_exists.to(device=delta.device, dtype=torch.bool)[:, None], delta, 0.0)
    result[:, index] = delta
    return result.to(can_bus.dtype)


def bev_shift(can_bus: torch.Tensor, bev_h: int, bev_w: int, pc_range: Sequence[float]) -> torch.Tensor:
    """The published shift of the history entry's reference points, in normalized BEV units.

    The global translation ``can_bus[:2]`` is expressed relative to the ego heading ``can_bus[16]``:
    ``shift_y = |t| cos(yaw - angle(t)) / cell_y / bev_h`` (forward, the lidar y axis) and
    ``shift_x = |t| sin(yaw - angle(t)) / cell_x / bev_w`` (right, the lidar x axis). A translation of
    one cell straight ahead is a shift of (0, 1 / bev_h).

    Args:
        can_bus: (B, 18) published vectors (:func:`published_can_bus`).
        bev_h, bev_w: BEV grid size; pc_range: the range it covers.

    Returns:
        (B, 2) shift (x, y), dtype of ``can_bus`` (computed in float64 as BEVFormer does in numpy).
    """
    _check_can_bus(can_bus)
    x_min, y_min, _, x_max, y_max, _ = check_pc_range(pc_range)
    cell_x, cell_y = (x_max - x_min) / bev_w, (y_max - y_min) / bev_h
    values = can_bus.to(torch.float64)
    delta_x, delta_y = values[:, 0], values[:, 1]
    ego_angle = values[:, YAW_RADIANS] / math.pi * 180.0
    length = torch.sqrt(delta_x**2 + delta_y**2)
    bev_angle = ego_angle - torch.atan2(delta_y, delta_x) / math.pi * 180.0
    shift_y = length * torch.cos(bev_angle / 180.0 * math.pi) / cell_y / bev_h
    shift_x = length * torch.sin(bev_angle / 180.0 * math.pi) / cell_x / bev_w
    return torch.stack([shift_x, shift_y], dim=-1).to(can_bus.dtype)


def rotate_bev(
    bev: torch.Tensor, angle: torch.Tensor, bev_h: int, bev_w: int, center: Sequence[float]
) -> torch.Tensor:
    """Rotate each sample's BEV image counter-clockwise by ``angle`` degrees about ``center``.

    This is ``torchvision.transforms.functional.rotate(image (C, bev_h, bev_w), angle, center=center)``
    (nearest neighbour, zeros outside), which BEVFormer applies to the previous BEV: the image's x axis
    runs along the columns, its y axis down the rows, pixel (row i, column j) has its centre at
    (j + 0.5, i + 0.5), and an output pixel p reads the input at ``R(angle) (p - center) + center``.
    A +90 degree turn moves the cell at ``center + (d, 0)`` to ``center + (0, -d)``. BEVFormer's default
    centre (100, 100) is the grid centre of a 200 x 200 BEV only.

    Args:
        bev: (B, bev_h * bev_w, C) row-major over (row, column).
        angle: (B,) degrees (the yaw change ``can_bus[17]``).
        bev_h, bev_w: BEV grid size; center: (x, y) in pixels.

    Returns:
        (B, bev_h * bev_w, C).
    """
    if bev.dim() != 3 or bev.shape[1] != bev_h * bev_w:
        raise ValueError(f"bev must have shape (B, {bev_h * bev_w}, C), got {tuple(bev.shape)}")
    batch, _, channels = bev.shape
    if angle.shape != (batch,):
        raise ValueError(f"angle must have shape ({batch},), got {tuple(angle.shape)}")
    if len(center) != 2:
        raise ValueError(f"center must be (x, y) in pixels, got {tuple(center)}")
    # torchvision: theta = inverse affine matrix of rotate(-angle) about the centre, relative to the
    # image centre, computed in double precision and used in the image's dtype (here at least float32:
    # nearest-neighbour copies are exact, bf16 positions would not be).
    dtype = torch.promote_types(bev.dtype, torch.float32)
    radians = torch.deg2rad(-angle.to(torch.float64))
    cos, sin = radians.cos(), radians.sin()
    cx, cy = float(center[0]) - bev_w * 0.5, float(center[1]) - bev_h * 0.5
    theta = torch.stack(
        [
            torch.stack([cos, sin, cos * -cx + sin * -cy + cx], dim=-1),
            torch.stack([-sin, cos, -sin * -cx + cos * -cy + cy], dim=-1),
        ],
        dim=1,
    ).to(device=bev.device, dtype=dtype)  # (B, 2, 3)
    xs = torch.linspace(
        -bev_w * 0.5 + 0.5, bev_w * 0.5 + 0.5 - 1, steps=bev_w, device=bev.device, dtype=dtype
    )
    ys = torch.linspace(
        -bev_h * 0.5 + 0.5, bev_h * 0.5 + 0.5 - 1, steps=bev_h, device=bev.device, dtype=dtype
    )
    base = torch.empty(1, bev_h, bev_w, 3, device=bev.device, dtype=dtype)
    base[..., 0] = xs
    base[..., 1] = ys[:, None]
    base[..., 2] = 1.0
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * bev_w, 0.5 * bev_h], device=bev.device, dtype=dtype)
    image = bev.transpose(1, 2).reshape(batch, channels, bev_h, bev_w).to(dtype)
    with torch.autocast(bev.device.type, enabled=False):  # autocast would run bmm in bf16
        grid = base.view(1, bev_h * bev_w, 3).expand(batch, -1, -1).bmm(scaled).view(batch, bev_h, bev_w, 2)
        rotated = F.grid_sample(image, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return rotated.flatten(2).transpose(1, 2).to(bev.dtype)


def align_prev_bev(
    prev_bev: torch.Tensor,
    ego_motion: torch.Tensor,
    bev_h: int,
    bev_w: int,
    pc_range: Sequence[float],
) -> torch.Tensor:
    """Resample the previous BEV at the places where the current BEV cells were one frame ago.

    For every current cell centre p (metric, z = 0) the previous-frame location is
    ``ego_motion^-1 @ p``; the previous BEV is read there bilinearly (``grid_sample``,
    ``align_corners=False``, zeros outside the grid). Only the planar part of the motion is used
    (rotation about z and translation in x, y). Zero motion is the identity; a translation by k cells
    shifts the BEV by k cells.

    Args:
        prev_bev: (B, bev_h * bev_w, C) previous BEV, row-major over (y, x) as in :mod:`bev.projection`.
        ego_motion: (B, 4, 4) transform of points from the previous lidar frame to the current one.
        bev_h, bev_w: BEV grid size.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the BEV grid.

    Returns:
        (B, bev_h * bev_w, C) the previous BEV expressed in the current frame.
    """
    if prev_bev.dim() != 3 or prev_bev.shape[1] != bev_h * bev_w:
        raise ValueError(f"prev_bev must have shape (B, {bev_h * bev_w}, C), got {tuple(prev_bev.shape)}")
    batch, _, channels = prev_bev.shape
    if ego_motion.shape != (batch, 4, 4):
        raise ValueError(f"ego_motion must have shape ({batch}, 4, 4), got {tuple(ego_motion.shape)}")
    x_min, y_min, _, x_max, y_max, _ = check_pc_range(pc_range)
    current_to_prev = torch.linalg.inv(ego_motion.to(torch.float64)).to(prev_bev.dtype)
    centers = bev_cell_centers(bev_h, bev_w, pc_range, device=prev_bev.device, dtype=prev_bev.dtype)
    rotation, translation = current_to_prev[:, :2, :2], current_to_prev[:, None, :2, 3]
    prev_xy = torch.einsum("bij,qj->bqi", rotation, centers) + translation
    low = prev_xy.new_tensor([x_min, y_min])
    size = prev_xy.new_tensor([x_max - x_min, y_max - y_min])
    grid = ((prev_xy - low) / size * 2.0 - 1.0).reshape(batch, bev_h, bev_w, 2)
    image = prev_bev.transpose(1, 2).reshape(batch, channels, bev_h, bev_w)
    aligned = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return aligned.flatten(2).transpose(1, 2)


def ego_motion_between(prev_lidar2global: torch.Tensor, lidar2global: torch.Tensor) -> torch.Tensor:
    """(..., 4, 4) transform from the previous frame's lidar frame to the current one's.

    Args:
        prev_lidar2global, lidar2global: (..., 4, 4) lidar -> global poses of the two frames.

    Returns:
        ``inv(lidar2global) @ prev_lidar2global``, in the dtype of ``lidar2global`` (computed in float64).
    """
    if prev_lidar2global.shape != lidar2global.shape or lidar2global.shape[-2:] != (4, 4):
        raise ValueError(
            f"poses must both have shape (..., 4, 4), got {tuple(prev_lidar2global.shape)} "
            f"and {tuple(lidar2global.shape)}"
        )
    motion = torch.linalg.solve(lidar2global.to(torch.float64), prev_lidar2global.to(torch.float64))
    return motion.to(lidar2global.dtype)
