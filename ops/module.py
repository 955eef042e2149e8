"""``MSDeformAttn``: the multi-scale deformable attention module with the official parameter names."""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import ms_deform_attn
from .validation import compute_dtype


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


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Zhu et al., 2021).

    Parameters (checkpoint names): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``.

    Args:
        embed_dims: channels C of query and value; must be divisible by ``num_heads``.
        num_levels: number of feature levels L.
        num_heads: number of heads M.
        num_points: sampling points P per head and level.
        im2col_step: forwarded to the op (accepted for compatibility; the op ignores it).
        backend: op backend (None = automatic, see :func:`ops.ms_deform_attn`).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        im2col_step: int = 64,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init (:func:`init_deformable_attention`, one group per level)."""
        init_deformable_attention(
            self.sampling_offsets,
            self.attention_weights,
            self.value_proj,
            self.output_proj,
            self.num_heads,
            self.num_levels,
            self.num_points,
        )

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from every query to P points per head and level around its reference point.

        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, L, 2) normalized (x, y), or (N, Lq, L, 4) boxes (cx, cy, w, h).
            input_flatten: (N, S, C) flattened multi-level features.
            input_spatial_shapes: (L, 2) int64 rows (H_l, W_l).
            input_level_start_index: (L,) int64.
            input_padding_mask: (N, S) bool, True on padding (those values are zeroed), or None.

        Returns:
            (N, Lq, C).

        Under ``torch.autocast`` the projections run in the low dtype; the sampling offsets, the
        attention weights (softmax) and the locations are computed in float32 (the compute dtype of
        the low-precision ``value``), so sampling positions keep float32 precision.
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, num_levels, num_points = self.num_heads, self.num_levels, self.num_points
        if (
            reference_points.dim() != 4
            or reference_points.shape[:3] != (n, lq, num_levels)
            or (reference_points.shape[-1] not in (2, 4))
        ):
            raise ValueError(
                f"reference_points must have shape ({n}, {lq}, {num_levels}, 2 or 4), "
                f"got {tuple(reference_points.shape)}"
            )
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.embed_dims // m)
        compute = compute_dtype(value.dtype)
        offsets = self.sampling_offsets(query).to(compute).view(n, lq, m, num_levels, num_points, 2)
        weights = self.attention_weights(query).to(compute).view(n, lq, m, num_levels * num_points)
        weights = weights.softmax(-1).view(n, lq, m, num_levels, num_points)
        if reference_points.shape[-1] == 2:
            normalizer = input_spatial_shapes.flip(-1).to(compute)  # (L, 2) as (W, H)
            locations = (
                reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            )
        else:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / num_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        output = ms_deform_attn(
            value,
            input_spatial_shapes,
            input_level_start_index,
            locations,
            weights,
            self.im2col_step,
            backend=self.backend,
        )
        return self.output_proj(output)
