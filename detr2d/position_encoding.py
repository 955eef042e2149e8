"""Sine position encodings: of feature-map positions (from the padding mask) and of proposal boxes."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sine_embed(coords: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """Embed every coordinate with ``num_pos_feats`` sines and cosines.

    Feature ``2i`` is ``sin(c / T^(2i / F))`` and feature ``2i + 1`` is ``cos(c / T^(2i / F))`` (F =
    ``num_pos_feats``, T = ``temperature``); the K coordinates are concatenated in their order.

    Args:
        coords: (..., K) already scaled coordinates.

    Returns:
        (..., K * num_pos_feats) float32.
    """
    if num_pos_feats % 2 != 0:
        raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos = coords.float()[..., None] / dim_t  # (..., K, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1)  # (..., K, F/2, 2)
    return pos.flatten(-3)


class PositionEmbeddingSine(nn.Module):
    """DETR's normalized sine encoding of the valid positions of a padded feature map.

    Positions are counted over valid cells only: row ``y`` (0-based) becomes
    ``(y + 1 - offset) / valid_h * scale`` (and likewise for columns), so an image gets the same
    encoding padded or alone. Channels are the ``num_pos_feats`` features of y followed by those of x.

    Args:
        num_pos_feats: features per axis (half the model width; 128 for embed_dims 256).
        temperature: frequency base T.
        scale: range of the normalized coordinates (2 pi).
        offset: subtracted from the 1-based cumulative count before normalizing: 0.5 in Deformable
            DETR (cell centres), 0 in DETR.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        scale: float = 2 * math.pi,
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.offset = offset

    def forward(self, mask: Tensor) -> Tensor:
        """(B, H, W) bool mask, True on padding -> (B, 2 * num_pos_feats, H, W) float32."""
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        eps = 1e-6
        y = (y - self.offset) / (y[:, -1:, :] + eps) * self.scale
        x = (x - self.offset) / (x[:, :, -1:] + eps) * self.scale
        pos = sine_embed(torch.stack([y, x], dim=-1), self.num_pos_feats, self.temperature)
        return pos.permute(0, 3, 1, 2).contiguous()


def proposal_sine_embed(proposals: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """Two-stage query embedding of proposals kept in logit space.

    Args:
        proposals: (N, K, 4) unnormalized (inverse-sigmoid) boxes (cx, cy, w, h).

    Returns:
        (N, K, 4 * num_pos_feats): the sine features of ``sigmoid(proposals) * 2 pi``.
    """
    return sine_embed(proposals.sigmoid() * (2 * math.pi), num_pos_feats, temperature)
