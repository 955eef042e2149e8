"""Deformable transformer decoder: self-attention, deformable cross-attention, FFN; box refinement."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers.box_ops import apply_box_delta
from .layers.transformer import DecoderLayer, clones


class Decoder(nn.Module):
    """A stack of decoder layers returning every layer's queries and references.

    With iterative box refinement, ``bbox_embed`` (one head per layer, attached with
    :meth:`attach_heads`) moves the references after every layer: the box delta is added in
    inverse-sigmoid space and the result is detached before the next layer. Two-stage also attaches
    ``class_embed``, whose extra last head scores the encoder proposals.

    Args:
        layer: the layer to copy ``num_layers`` times (checkpoint names ``layers.{i}``).
        num_layers: number of layers D.
    """

    def __init__(self, layer: DecoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed: nn.ModuleList | None = None
        self.class_embed: nn.ModuleList | None = None

    def attach_heads(self, bbox_embed: nn.ModuleList, class_embed: nn.ModuleList | None = None) -> None:
        """Share the model's per-layer heads (checkpoint names ``bbox_embed.*``, ``class_embed.*``)."""
        if len(bbox_embed) < self.num_layers:
            raise ValueError(f"need at least {self.num_layers} box heads, got {len(bbox_embed)}")
        self.bbox_embed = bbox_embed
        if class_embed is not None:
            self.class_embed = class_embed

    def forward(
        self,
        tgt: Tensor,
        reference_points: Tensor,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        valid_ratios: Tensor,
        query_pos: Tensor,
        padding_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Decode queries against the memory.

        Args:
            tgt: (N, Q, C) initial query content.
            reference_points: (N, Q, 2) points or (N, Q, 4) boxes in [0, 1] of the valid image region.
            src: (N, S, C) memory.
            spatial_shapes: (L, 2) int64.
            level_start_index: (L,) int64.
            valid_ratios: (N, L, 2) valid fraction (w, h) of every level.
            query_pos: (N, Q, C).
            padding_mask: (N, S) bool or None.

        Returns:
            hs (D, N, Q, C): every layer's output; references (D, N, Q, 2 or 4): the references
            after every layer (unchanged without refinement; 4-d once refined).
        """
        out, hs, refs = tgt, [], []
        for lid, layer in enumerate(self.layers):
            ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios] * 2, -1)
            level_refs = reference_points[:, :, None] * ratios[:, None]  # (N, Q, L, 2 or 4)
            out = layer(out, query_pos, level_refs, src, spatial_shapes, level_start_index, padding_mask)
            if self.bbox_embed is not None:
                reference_points = apply_box_delta(self.bbox_embed[lid](out), reference_points).detach()
            hs.append(out)
            refs.append(reference_points)
        return torch.stack(hs), torch.stack(refs)
