"""Deformable transformer encoder: post-norm layers of multi-scale deformable self-attention + FFN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ops import MSDeformAttn

from .layers.transformer import clones, feed_forward


class EncoderLayer(nn.Module):
    """``x = norm1(x + drop(attn(x + pos)))``; ``x = norm2(x + FFN(x))``.

    Args:
        embed_dims: width C.
        ffn_dims: FFN hidden width.
        dropout: dropout probability.
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
        self.self_attn = MSDeformAttn(embed_dims, num_levels, num_heads, num_points, backend=backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None,
    ) -> Tensor:
        """(N, S, C) ``src`` and ``pos``, (N, S, L, 2) reference points, (N, S) mask -> (N, S, C)."""
        attn = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout1(attn))
        return feed_forward(src, self.linear1, self.linear2, self.dropout2, self.dropout3, self.norm2)


def level_sizes(spatial_shapes: Tensor | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(H_l, W_l) of every level as Python numbers.

    Args:
        spatial_shapes: the sizes themselves (ints, or the SymInts of the feature maps' shapes while
            ``torch.export`` traces with free image sizes), or an (L, 2) int64 tensor, read with
            ``tolist`` (eager only: a traced graph would bake the values in).
    """
    if isinstance(spatial_shapes, Tensor):
        return [(h, w) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def encoder_reference_points(
    spatial_shapes: Tensor | Sequence[tuple[int, int]], valid_ratios: Tensor
) -> Tensor:
    """Cell centres of every level, as seen from every level.

    The centre of cell (i, j) of level l is ((j + 0.5) / valid_w_l, (i + 0.5) / valid_h_l) in the
    valid region of the image, then multiplied by each level's valid ratio to address that level.

    Args:
        spatial_shapes: level sizes (H_l, W_l), see :func:`level_sizes`.
        valid_ratios: (N, L, 2) valid fraction (w, h) of every level.

    Returns:
        (N, S, L, 2) normalized (x, y), S = sum_l H_l * W_l.
    """
    refs = []
    device = valid_ratios.device
    for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5)[:, None].expand(h, w).reshape(-1)
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5)[None, :].expand(h, w).reshape(-1)
        ref_y = ys[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = xs[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack([ref_x, ref_y], dim=-1))
    return torch.cat(refs, dim=1)[:, :, None] * valid_ratios[:, None]


class Encoder(nn.Module):
    """A stack of ``num_layers`` copies of ``layer`` (checkpoint names ``layers.{i}``)."""

    def __init__(self, layer: EncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None,
        sizes: Sequence[tuple[int, int]],
    ) -> Tensor:
        """Encode (N, S, C) flattened features with (N, S, C) positions -> memory (N, S, C).

        ``valid_ratios`` is (N, L, 2); ``padding_mask`` (N, S) bool is True on padding; ``sizes`` are
        the (H_l, W_l) of ``spatial_shapes`` (L, 2) as Python ints or SymInts (see :func:`level_sizes`).
        """
        reference_points = encoder_reference_points(sizes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out
