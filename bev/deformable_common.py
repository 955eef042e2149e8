"""What the BEV modules that call the op directly share: the Deformable DETR init and the im2col step."""

from __future__ import annotations

import math

import torch
from torch import nn


def im2col_step_for(batch: int, preferred: int = 64) -> int:
    """Largest divisor of ``batch`` that is <= ``preferred``: the op needs the batch divisible by its step."""
    if batch < 1 or preferred < 1:
        raise ValueError(f"batch and preferred must be positive, got {batch} and {preferred}")
    return max(step for step in range(1, min(batch, preferred) + 1) if batch % step == 0)


def init_deformable_attention(
    sampling_offsets: nn.Linear,
    attention_weights: nn.Linear,
    value_proj: nn.Linear,
    output_proj: nn.Linear,
    num_heads: int,
    num_groups: int,
    num_points: int,
) -> None:
    """Deformable DETR init of the four projections of a deformable attention.

    ``sampling_offsets`` has weight 0 and a bias laid out (heads, groups, points, 2) (groups = levels, or
    queue x levels): head k points in direction (cos, sin)(2 pi k / M) scaled so max |.| = 1, times
    (point index + 1). ``attention_weights`` is all zeros; the value and output projections are
    xavier-uniform with zero bias.
    """
    nn.init.zeros_(sampling_offsets.weight)
    angles = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
    directions = directions / directions.abs().max(dim=-1, keepdim=True).values
    grid = directions.view(num_heads, 1, 1, 2).repeat(1, num_groups, num_points, 1)
    grid = grid * torch.arange(1, num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
    if sampling_offsets.bias.numel() != grid.numel():
        raise ValueError(
            f"sampling_offsets has {sampling_offsets.bias.numel()} outputs, expected "
            f"{num_heads} x {num_groups} x {num_points} x 2"
        )
    with torch.no_grad():
        sampling_offsets.bias.copy_(grid.flatten())
    nn.init.zeros_(attention_weights.weight)
    nn.init.zeros_(attention_weights.bias)
    for proj in (value_proj, output_proj):
        nn.init.xavier_uniform_(proj.weight)
        nn.init.zeros_(proj.bias)
