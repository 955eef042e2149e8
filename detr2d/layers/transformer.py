"""Transformer layers shared by the detectors: the post-norm residual FFN, the deformable decoder layer
(Deformable DETR's decoder, BEVFormer's detection decoder) and the global-attention decoder layer
(DETR's decoder, PETR's)."""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from ops import MSDeformAttn


def feed_forward(
    x: Tensor,
    linear1: nn.Linear,
    linear2: nn.Linear,
    drop_hidden: nn.Dropout,
    drop_out: nn.Dropout,
    norm: nn.LayerNorm,
) -> Tensor:
    """Post-norm residual FFN: ``norm(x + drop_out(linear2(drop_hidden(relu(linear1(x))))))``."""
    return norm(x + drop_out(linear2(drop_hidden(F.relu(linear1(x))))))


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """``n`` independent deep copies of ``module``."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


class DecoderLayer(nn.Module):
    """Self-attention -> norm2, deformable cross-attention -> norm1, FFN -> norm3 (official names).

    Args:
        embed_dims: width C.
        ffn_dims: FFN hidden width.
        dropout: dropout probability (also inside the self-attention).
        num_levels: feature levels L.
        num_heads: attention heads M.
        num_points: sampling points P per head and level.
        backend: backend of the deformable attention op (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        ffn_dims: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(embed_dims, num_levels, num_heads, num_points, backend=backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        tgt: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        """Update (N, Q, C) queries.

        Args:
            tgt: (N, Q, C) query content.
            query_pos: (N, Q, C) query position.
            reference_points: (N, Q, L, 2 or 4) per-level references.
            src: (N, S, C) encoder memory.
            spatial_shapes: (L, 2) int64.
            level_start_index: (L,) int64.
            padding_mask: (N, S) bool, True on padding, or None.

        Returns:
            (N, Q, C).
        """
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(
            tgt + query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        tgt = self.norm1(tgt + self.dropout1(attn))
        return feed_forward(tgt, self.linear1, self.linear2, self.dropout3, self.dropout4, self.norm3)


def attention(
    attn: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None
) -> Tensor:
    """``attn`` on (B, L, C) query and (B, S, C) key/value, ignoring keys where ``mask`` (B, S) is True."""
    return attn(query, key, value, key_padding_mask=mask, need_weights=False)[0]


class DETRDecoderLayer(nn.Module):
    """DETR's decoder layer, also PETR's: post-norm self-attention, global cross-attention and FFN (names
    ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``..``norm3``: DETR's checkpoint
    names; PETR's key map renames them).

    Args:
        embed_dims: model width C.
        num_heads: attention heads.
        ffn_dims: hidden width of the FFN.
        dropout: dropout of the attention weights, the residual branches and the FFN.
    """

    def __init__(self, embed_dims: int, num_heads: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.norm3 = nn.LayerNorm(embed_dims)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Update the (B, Q, C) queries ``tgt`` (positions ``query_pos`` (B, Q, C)) from the (B, S, C)
        ``memory`` (positions ``pos``, padding ``mask`` (B, S) or None) -> (B, Q, C)."""
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(attention(self.self_attn, qk, qk, tgt, None)))
        cross = attention(self.multihead_attn, tgt + query_pos, memory + pos, memory, mask)
        tgt = self.norm2(tgt + self.dropout(cross))
        return feed_forward(tgt, self.linear1, self.linear2, self.dropout, self.dropout, self.norm3)
