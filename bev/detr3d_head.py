"""DETR3D-style decoder layer: queries sample the camera features where their 3-d reference points project.

Used with :class:`bev.decoder.DetectionDecoder` instead of :class:`bev.decoder.BEVDecoderLayer`, it
gives a detector without a BEV grid (Wang et al., 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from detr2d.layers.box_ops import inverse_sigmoid
from detr2d.layers.transformer import feed_forward
from ops import ms_deform_attn

from .projection import check_pc_range, normalized_to_metric, project_to_cameras


@dataclass
class CameraMemory:
    """What the DETR3D layers read: the neck's features of every camera and the camera geometry."""

    mlvl_feats: Sequence[torch.Tensor]  # L tensors (B, Ncam, C, H_l, W_l)
    lidar2img: torch.Tensor  # (B, Ncam, 4, 4), pixels of the padded input image
    img_shape: tuple[int, int]  # (H, W) of the padded input image

    def repeat_batch(self, times: int) -> CameraMemory:
        """Each sample ``times`` times in a row (sample b becomes b * times ... b * times + times - 1)."""
        return CameraMemory(
            [feat.repeat_interleave(times, dim=0) for feat in self.mlvl_feats],
            self.lidar2img.repeat_interleave(times, dim=0),
            self.img_shape,
        )


class Detr3DCrossAttention(nn.Module):
    """DETR3D's cross-attention through the op: one sampling point per camera and level.

    Each query's reference point (in [0, 1]^3 over ``pc_range``) is projected into every camera; the
    op samples every level there (bilinear, zeros outside) with weight sigmoid(``attention_weights``)
    times visibility, and the cameras are summed. The output is ``query + drop(output_proj(.)) +
    position_encoder(inverse_sigmoid(reference))``.

    Args:
        embed_dims: channels C.
        num_cams: cameras per sample.
        num_levels: feature levels per camera.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max).
        dropout: dropout of the attention output.
        im2col_step: forwarded to the op (accepted for compatibility, ignored by it).
        backend: op backend (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int,
        num_cams: int,
        num_levels: int,
        pc_range: Sequence[float],
        dropout: float = 0.1,
        im2col_step: int = 64,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_cams = num_cams
        self.num_levels = num_levels
        self.pc_range = check_pc_range(pc_range)
        self.im2col_step = im2col_step
        self.backend = backend
        self.attention_weights = nn.Linear(embed_dims, num_cams * num_levels)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.position_encoder = nn.Sequential(
            nn.Linear(3, embed_dims),
            nn.LayerNorm(embed_dims),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dims, embed_dims),
            nn.LayerNorm(embed_dims),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: CameraMemory,
    ) -> torch.Tensor:
        """Args:
            query, query_pos: (B, Q, C).
            reference_points: (B, Q, 3) in [0, 1] over ``pc_range``.
            memory: camera features and geometry.

        Returns:
            (B, Q, C) the updated queries (residual included).
        """
        batch, num_queries, channels = query.shape
        num_cams, num_levels = self.num_cams, self.num_levels
        if len(memory.mlvl_feats) != num_levels:
            raise ValueError(f"expected {num_levels} feature levels, got {len(memory.mlvl_feats)}")
        for level, feat in enumerate(memory.mlvl_feats):
            if feat.dim() != 5 or feat.shape[:3] != (batch, num_cams, channels):
                raise ValueError(
                    f"feature level {level} must have shape ({batch}, {num_cams}, {channels}, H, W), "
                    f"got {tuple(feat.shape)}"
                )
        points = normalized_to_metric(reference_points, self.pc_range)[:, :, None, :]  # (B, Q, 1, 3)
        uv, visible = project_to_cameras(points, memory.lidar2img, memory.img_shape)
        n = batch * num_cams
        weights = (
            self.attention_weights(query + query_pos).sigmoid().view(batch, num_queries, num_cams, num_levels)
        )
        weights = weights.permute(0, 2, 1, 3) * visible.to(weights.dtype)  # (B, Ncam, Q, L)
        weights = weights.reshape(n, num_queries, 1, num_levels, 1)
        locations = uv.reshape(n, num_queries, 1, 1, 1, 2).expand(n, num_queries, 1, num_levels, 1, 2)
        shapes = [feat.shape[-2:] for feat in memory.mlvl_feats]
        value = torch.cat([feat.flatten(3) for feat in memory.mlvl_feats], dim=3)  # (B, Ncam, C, S)
        value = value.transpose(2, 3).reshape(n, -1, 1, channels)
        spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=query.device)
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(dim=1).cumsum(dim=0)[:-1]]
        )
        sampled = ms_deform_attn(
            value,
            spatial_shapes,
            level_start_index,
            locations.contiguous(),
            weights,
            self.im2col_step,
            backend=self.backend,
        )  # (B*Ncam, Q, C)
        output = self.output_proj(sampled.view(batch, num_cams, num_queries, channels).sum(dim=1))
        return query + self.dropout(output) + self.position_encoder(inverse_sigmoid(reference_points))


class Detr3DDecoderLayer(nn.Module):
    """Self-attention -> norm, DETR3D cross-attention -> norm, FFN -> norm.

    Args:
        embed_dims: channels C.
        num_cams: cameras per sample.
        num_levels: feature levels per camera.
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max).
        num_heads: self-attention heads.
        ffn_dims: FFN hidden channels.
        dropout: dropout of attention outputs and FFN.
        backend: op backend (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int,
        num_cams: int,
        num_levels: int,
        pc_range: Sequence[float],
        num_heads: int = 8,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.cross_attn = Detr3DCrossAttention(
            embed_dims, num_cams, num_levels, pc_range, dropout=dropout, backend=backend
        )
        self.norm2 = nn.LayerNorm(embed_dims)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.dropout3 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: CameraMemory,
    ) -> torch.Tensor:
        """Args:
            query, query_pos: (B, Q, C).
            reference_points: (B, Q, 3) in [0, 1] over ``pc_range``.
            memory: camera features and geometry.

        Returns:
            (B, Q, C).
        """
        q = k = query + query_pos
        query = self.norm1(query + self.dropout1(self.self_attn(q, k, query, need_weights=False)[0]))
        query = self.norm2(self.cross_attn(query, query_pos, reference_points, memory))
        return feed_forward(query, self.linear1, self.linear2, self.dropout2, self.dropout3, self.norm3)
