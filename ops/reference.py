"""Pure-PyTorch multi-scale deformable attention: the oracle every other backend is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import compute_dtype


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling of every level with ``F.grid_sample`` and a weighted sum over levels and points.

    Computes in the compute dtype of ``value`` (float32 for half/bfloat16 values, as the native kernels)
    and returns ``value``'s dtype. A non-finite location samples nothing (zero output and gradients, as
    the native kernels): locations are first clamped to [-1, 2] (beyond it every corner is off the map
    and every gradient zero, so this changes nothing) and NaN / +-inf become -1; grid_sample itself
    would return NaN for them.

    Args:
        value: (N, S, M, D) with S = sum_l H_l * W_l.
        spatial_shapes: (L, 2) int64 rows (H_l, W_l).
        level_start_index: (L,) int64; unused here (levels are split by ``spatial_shapes``), kept for
            a signature shared with the native backends.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y); outside [0, 1] reads zeros.
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D).
    """
    del level_start_index
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    compute = compute_dtype(value.dtype)
    locations = sampling_locations.to(compute).nan_to_num(nan=-1.0, posinf=-1.0, neginf=-1.0).clamp(-1.0, 2.0)
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_levels = value.to(compute).split(sizes, dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_levels[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.to(compute).transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(n, m * d, lq).transpose(1, 2).to(value.dtype).contiguous()
