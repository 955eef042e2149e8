"""Warp the previous frame's BEV into the current frame by the ego motion between the two lidar frames."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .projection import bev_cell_centers, check_pc_range


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
