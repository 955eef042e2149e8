"""Spatial cross-attention (BEVFormer): BEV queries read the camera features where their pillars project."""

from __future__ import annotations

import torch
from torch import nn

from ops import init_deformable_attention, ms_deform_attn


class SpatialCrossAttention(nn.Module):
    """Deformable attention from each BEV query into the cameras that see its pillar.

    For every (sample, camera) the queries whose pillar has at least one visible point are gathered
    (BEVFormer's saving: a camera only works for the queries it sees). Each gathered query samples
    that camera's multi-level features around the projections of its Z pillar points: the
    ``num_points`` offsets per head and level are split evenly among the Z points. The results are
    summed back per query and divided by the number of cameras that see it. Visibility and gathering
    are per sample, so every sample of a batch gets exactly what it gets alone.

    Parameters (BEVFormer names): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``.

    Args:
        embed_dims: channels C of queries and features.
        num_levels: feature levels L per camera.
        num_heads: heads M.
        num_points: sampling points P per head and level, a multiple of ``num_z_anchors``.
        num_z_anchors: points Z per pillar.
        im2col_step: forwarded to the op (accepted for compatibility, ignored by it).
        backend: op backend (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 8,
        num_z_anchors: int = 4,
        im2col_step: int = 64,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        if num_points % num_z_anchors != 0:
            raise ValueError(
                f"num_points ({num_points}) must be a multiple of num_z_anchors ({num_z_anchors})"
            )
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.num_z_anchors = num_z_anchors
        self.im2col_step = im2col_step
        self.backend = backend
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init (see :func:`ops.init_deformable_attention`)."""
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
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        visible: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Args:
            query: (B, Q, C) BEV queries.
            value: (B, Ncam, S, C) flattened multi-level camera features, S = sum_l H_l * W_l.
            reference_points_cam: (B, Ncam, Q, Z, 2) normalized image (x, y) of each pillar point.
            visible: (B, Ncam, Q, Z) bool, pillar point inside that camera's image.
            spatial_shapes: (L, 2) int64 rows (H_l, W_l).
            level_start_index: (L,) int64.

        Returns:
            (B, Q, C) the attention output (before residual and dropout); queries no camera sees get
            ``output_proj`` of zeros.
        """
        batch, num_queries, channels = query.shape
        num_cams = value.shape[1]
        z = self.num_z_anchors
        if value.dim() != 4 or value.shape[0] != batch or value.shape[-1] != channels:
            raise ValueError(
                f"value must have shape ({batch}, Ncam, S, {channels}), got {tuple(value.shape)}"
            )
        if reference_points_cam.shape != (batch, num_cams, num_queries, z, 2):
            raise ValueError(
                f"reference_points_cam must have shape {(batch, num_cams, num_queries, z, 2)}, "
                f"got {tuple(reference_points_cam.shape)}"
            )
        if visible.shape != (batch, num_cams, num_queries, z):
            raise ValueError(
                f"visible must have shape {(batch, num_cams, num_queries, z)}, got {tuple(visible.shape)}"
            )
        if spatial_shapes.shape != (self.num_levels, 2):
            raise ValueError(
                f"spatial_shapes must have shape ({self.num_levels}, 2), got {tuple(spatial_shapes.shape)}"
            )

        # Gather, per (sample, camera), the queries it sees: the first `counts` entries of `order`.
        seen = visible.any(dim=-1).flatten(0, 1)  # (B*Ncam, Q)
        counts = seen.sum(dim=-1)  # (B*Ncam,)
        max_len = max(int(counts.max()), 1)
        order = torch.sort(seen.to(torch.uint8), dim=-1, descending=True, stable=True).indices[:, :max_len]
        valid = torch.arange(max_len, device=query.device)[None, :] < counts[:, None]  # (B*Ncam, max_len)
        sample_index = torch.arange(batch, device=query.device).repeat_interleave(num_cams)[:, None]
        camera_rows = torch.arange(batch * num_cams, device=query.device)[:, None]
        gathered_query = query[sample_index, order]  # (B*Ncam, max_len, C)
        gathered_refs = reference_points_cam.flatten(0, 1)[camera_rows, order]  # (B*Ncam, max_len, Z, 2)

        n = batch * num_cams
        m, num_levels, num_points = self.num_heads, self.num_levels, self.num_points
        projected = self.value_proj(value.flatten(0, 1)).view(n, value.shape[2], m, channels // m)
        offsets = self.sampling_offsets(gathered_query).view(n, max_len, m, num_levels, num_points // z, z, 2)
        normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
        locations = gathered_refs[:, :, None, None, None, :, :] + offsets / normalizer[:, None, None, :]
        locations = locations.reshape(n, max_len, m, num_levels, num_points, 2)
        weights = self.attention_weights(gathered_query).view(n, max_len, m, num_levels * num_points)
        weights = weights.softmax(-1).view(n, max_len, m, num_levels, num_points)
        sampled = ms_deform_attn(
            projected,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            self.im2col_step,
            backend=self.backend,
        )  # (B*Ncam, max_len, C)

        # Scatter back: sum over the cameras that see each query, then average.
        target = (sample_index * num_queries + order)[valid]
        slots = sampled.new_zeros(batch * num_queries, channels).index_add(0, target, sampled[valid])
        num_seeing = seen.view(batch, num_cams, num_queries).sum(dim=1).clamp(min=1)
        slots = slots.view(batch, num_queries, channels) / num_seeing[..., None].to(slots.dtype)
        return self.output_proj(slots)
