"""Temporal self-attention (BEVFormer): BEV queries attend to [aligned previous BEV, current BEV queries]."""

from __future__ import annotations

import torch
from torch import nn

from ops import init_deformable_attention, ms_deform_attn

from .projection import bev_cell_centers

BEV_QUEUE = 2  # one history BEV and the current queries
UNIT_RANGE = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)  # BEV cell centres in normalized coordinates


class TemporalSelfAttention(nn.Module):
    """Deformable attention over a queue of two single-level BEVs: the history and the current queries.

    Offsets and weights come from [history, query + query_pos] (2C channels) per sample; each queue
    entry is sampled around its reference point (default: the query's own cell centre) with its own
    softmax over P points, and the two results are averaged. Without history the caller passes the
    current queries as ``history``, so the BEV attends to itself (the current queries stacked twice).
    The value's current entry is ``current`` (default: this layer's queries; the published encoder
    passes its first layer's input queries whenever there is history). Everything is per sample: the
    original reads the history of batch element 0 for every sample's offsets.

    Parameters (BEVFormer names): ``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``.

    Args:
        embed_dims: channels C.
        num_heads: heads M.
        num_points: sampling points P per head and queue entry.
        im2col_step: forwarded to the op (accepted for compatibility, ignored by it).
        backend: op backend (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_points: int = 4,
        im2col_step: int = 64,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_points = num_points
        self.im2col_step = im2col_step
        self.backend = backend
        self.sampling_offsets = nn.Linear(BEV_QUEUE * embed_dims, BEV_QUEUE * num_heads * num_points * 2)
        self.attention_weights = nn.Linear(BEV_QUEUE * embed_dims, BEV_QUEUE * num_heads * num_points)
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
            BEV_QUEUE,
            self.num_points,
        )

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        history: torch.Tensor,
        bev_h: int,
        bev_w: int,
        current: torch.Tensor | None = None,
        reference_points: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            query: (B, Q, C) current BEV queries, Q = bev_h * bev_w.
            query_pos: (B, Q, C) or (Q, C) BEV positional embedding.
            history: (B, Q, C) previous BEV aligned to the current frame, or ``query`` without history.
            bev_h, bev_w: BEV grid size.
            current: (B, Q, C) the value's current entry, or None for ``query``.
            reference_points: (B, 2, Q, 2) normalized (x, y) of every query in the history and the
                current entry (:func:`tsa_reference_points`), or None for the cell centres.

        Returns:
            (B, Q, C) the attention output (before residual and dropout).
        """
        batch, num_queries, channels = query.shape
        if num_queries != bev_h * bev_w:
            raise ValueError(f"query has {num_queries} positions but the BEV is {bev_h} x {bev_w}")
        if history.shape != query.shape:
            raise ValueError(
                f"history must have the query's shape {tuple(query.shape)}, got {tuple(history.shape)}"
            )
        current = query if current is None else current
        if current.shape != query.shape:
            raise ValueError(
                f"current must have the query's shape {tuple(query.shape)}, got {tuple(current.shape)}"
            )
        if reference_points is None:
            position_dtype = torch.promote_types(query.dtype, torch.float32)
            reference_points = tsa_reference_points(
                bev_h, bev_w, query.new_zeros(batch, 2, dtype=position_dtype)
            )
        elif reference_points.shape != (batch, BEV_QUEUE, num_queries, 2):
            raise ValueError(
                f"reference_points must have shape {(batch, BEV_QUEUE, num_queries, 2)}, "
                f"got {tuple(reference_points.shape)}"
            )
        m, p = self.num_heads, self.num_points
        n = batch * BEV_QUEUE
        mixed = torch.cat([history, query + query_pos], dim=-1)  # (B, Q, 2C)
        # Queue entries are laid out sample-major: op batch index = b * 2 + t (t = 0 history, 1 current).
        value = self.value_proj(torch.stack([history, current], dim=1)).view(n, num_queries, m, channels // m)
        offsets = self.sampling_offsets(mixed).view(batch, num_queries, m, BEV_QUEUE, 1, p, 2)
        offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(n, num_queries, m, 1, p, 2)
        weights = self.attention_weights(mixed).view(batch, num_queries, m, BEV_QUEUE, p).softmax(-1)
        weights = weights.permute(0, 3, 1, 2, 4).reshape(n, num_queries, m, 1, p)
        normalizer = query.new_tensor([bev_w, bev_h])
        reference = reference_points.reshape(n, num_queries, 2)  # float32 (at least) under autocast
        locations = reference[:, :, None, None, None, :] + offsets / normalizer
        spatial_shapes = torch.tensor([[bev_h, bev_w]], dtype=torch.int64, device=query.device)
        level_start_index = torch.zeros(1, dtype=torch.int64, device=query.device)
        output = ms_deform_attn(
            value,
            spatial_shapes,
            level_start_index,
            locations,
            weights,
            self.im2col_step,
            backend=self.backend,
        )  # (B*2, Q, C)
        return self.output_proj(output.view(batch, BEV_QUEUE, num_queries, channels).mean(dim=1))


def tsa_reference_points(
    bev_h: int, bev_w: int, shift: torch.Tensor, shift_current: bool = False
) -> torch.Tensor:
    """Reference points of temporal self-attention: the BEV cell centres in normalized (x, y).

    The history entry's points are moved by ``shift`` (the ego translation since the previous frame,
    :func:`bev.temporal_alignment.bev_shift`); with ``shift_current`` the current entry's are too (the
    BEVFormer v1 release shifted its 2-D reference points in place, ``shift_ref_2d = ref_2d``).

    Args:
        bev_h, bev_w: BEV grid size.
        shift: (B, 2) normalized (x, y) shift per sample.
        shift_current: shift the current entry as well (v1 release quirk).

    Returns:
        (B, 2, bev_h * bev_w, 2): entry 0 history, entry 1 current.
    """
    if shift.dim() != 2 or shift.shape[-1] != 2:
        raise ValueError(f"shift must have shape (B, 2), got {tuple(shift.shape)}")
    centres = bev_cell_centers(bev_h, bev_w, UNIT_RANGE, device=shift.device, dtype=shift.dtype)
    history = centres[None] + shift[:, None, :]
    current = history if shift_current else centres[None].expand_as(history)
    return torch.stack([history, current], dim=1)
