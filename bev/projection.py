"""Geometry between the BEV grid and the cameras: cell centres, pillar points and their projection.

Conventions (lidar frame of the current keyframe, metres):
- ``pc_range`` = (x_min, y_min, z_min, x_max, y_max, z_max).
- The BEV grid has ``bev_h`` rows along y and ``bev_w`` columns along x; the query of cell (row i,
  column j) sits at flat index ``i * bev_w + j`` and its centre is
  ``x = x_min + (j + 0.5) / bev_w * (x_max - x_min)``, ``y = y_min + (i + 0.5) / bev_h * (y_max - y_min)``.
  Normalized BEV coordinates (x, y) in [0, 1] therefore address the flattened BEV exactly as the op
  addresses a (bev_h, bev_w) feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PROJECTION_EPS = 1e-5


def check_pc_range(pc_range: Sequence[float]) -> tuple[float, ...]:
    """``pc_range`` as a 6-tuple of floats; ValueError unless it is (min xyz, max xyz) with min < max."""
    values = tuple(float(v) for v in pc_range)
    if len(values) != 6:
        raise ValueError(
            f"pc_range must have 6 values (x_min, y_min, z_min, x_max, y_max, z_max), got {values}"
        )
    if not all(values[i] < values[i + 3] for i in range(3)):
        raise ValueError(f"pc_range minimums must be below maximums, got {values}")
    return values


def bev_cell_centers(
    bev_h: int,
    bev_w: int,
    pc_range: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Metric (x, y) centres of the BEV cells.

    Returns:
        (bev_h * bev_w, 2), row-major over (row = y, column = x).
    """
    x_min, y_min, _, x_max, y_max, _ = check_pc_range(pc_range)
    xs = x_min + (torch.arange(bev_w, device=device, dtype=dtype) + 0.5) * ((x_max - x_min) / bev_w)
    ys = y_min + (torch.arange(bev_h, device=device, dtype=dtype) + 0.5) * ((y_max - y_min) / bev_h)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(bev_h * bev_w, 2)


def bev_pillar_points(
    bev_h: int,
    bev_w: int,
    pc_range: Sequence[float],
    num_points_in_pillar: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A vertical pillar of 3D points above every BEV cell centre.

    The heights are evenly spaced from ``z_min + 0.5`` to ``z_max - 0.5`` (BEVFormer's anchors: for
    z in [-5, 3] and 4 points, z = -4.5, -2.17, 0.17, 2.5).

    Returns:
        (bev_h * bev_w, Z, 3) metric (x, y, z) with Z = ``num_points_in_pillar``.
    """
    if num_points_in_pillar < 1:
        raise ValueError(f"num_points_in_pillar must be >= 1, got {num_points_in_pillar}")
    _, _, z_min, _, _, z_max = check_pc_range(pc_range)
    centers = bev_cell_centers(bev_h, bev_w, pc_range, device=device, dtype=dtype)
    zs = torch.linspace(z_min + 0.5, z_max - 0.5, num_points_in_pillar, device=device, dtype=dtype)
    num_cells = centers.shape[0]
    xy = centers[:, None, :].expand(num_cells, num_points_in_pillar, 2)
    z = zs[None, :, None].expand(num_cells, num_points_in_pillar, 1)
    return torch.cat([xy, z], dim=-1)


def normalized_to_metric(points: torch.Tensor, pc_range: Sequence[float]) -> torch.Tensor:
    """Map (..., 3) points from [0, 1]^3 over ``pc_range`` to metric lidar-frame (x, y, z)."""
    values = check_pc_range(pc_range)
    low = points.new_tensor(values[:3])
    size = points.new_tensor(values[3:]) - low
    return points * size + low


def project_to_cameras(
    points: torch.Tensor,
    lidar2img: torch.Tensor,
    img_shape: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project lidar-frame points into every camera of their own sample.

    A point is visible in a camera when its depth is > 1e-5 and its normalized image coordinates are
    strictly inside (0, 1). Visibility is computed for every sample separately. The projection runs in
    (at least) float32 even under autocast: bf16 positions would be off by pixels on a 1600-wide image.

    Args:
        points: (B, Q, Z, 3) metric lidar-frame points (Z points per query, e.g. a pillar).
        lidar2img: (B, Ncam, 4, 4) intrinsics @ (camera <- lidar), in pixels of the (padded) input image.
        img_shape: (H, W) of the (padded) input image in pixels.

    Returns:
        ``uv`` (B, Ncam, Q, Z, 2) image coordinates (u / W, v / H), and ``visible`` (B, Ncam, Q, Z) bool.
    """
    if points.dim() != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must have shape (B, Q, Z, 3), got {tuple(points.shape)}")
    batch = points.shape[0]
    if lidar2img.dim() != 4 or lidar2img.shape[0] != batch or lidar2img.shape[-2:] != (4, 4):
        raise ValueError(f"lidar2img must have shape ({batch}, Ncam, 4, 4), got {tuple(lidar2img.shape)}")
    height, width = img_shape
    if height <= 0 or width <= 0:
        raise ValueError(f"img_shape must be a positive (H, W), got {img_shape}")
    dtype = torch.promote_types(points.dtype, torch.float32)  # positions stay float32 under autocast
    with torch.autocast(points.device.type, enabled=False):
        homogeneous = torch.cat([points.to(dtype), torch.ones_like(points[..., :1], dtype=dtype)], dim=-1)
        camera = torch.einsum("bnij,bqzj->bnqzi", lidar2img.to(dtype), homogeneous)
        depth = camera[..., 2]
        uv = camera[..., :2] / depth.clamp(min=PROJECTION_EPS)[..., None]
        uv = uv / uv.new_tensor([width, height])
    visible = (depth > PROJECTION_EPS) & (uv > 0.0).all(dim=-1) & (uv < 1.0).all(dim=-1)
    return uv, visible
