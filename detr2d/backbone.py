"""The 2D detectors' backbone: a ResNet joined with the sine position embedding of its levels."""

from __future__ import annotations

from torch import Tensor, nn

from .layers.padding import PaddingMasks
from .layers.resnet import ResNetBackbone
from .position_encoding import PositionEmbeddingSine


class Joiner(nn.Sequential):
    """``[backbone, position encoding]``, named as the official checkpoint (``backbone.0.body.*``).

    Args:
        backbone: the ResNet.
        position_embedding: sine encoding computed from each level's mask (no parameters).
    """

    def __init__(self, backbone: ResNetBackbone, position_embedding: PositionEmbeddingSine) -> None:
        super().__init__(backbone, position_embedding)

    @property
    def strides(self) -> list[int]:
        return self[0].strides

    @property
    def num_channels(self) -> list[int]:
        return self[0].num_channels

    def forward(self, images: Tensor, masks: PaddingMasks) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Features, level masks and position encodings of every backbone level.

        Args:
            images: (B, 3, H, W).
            masks: the batch's :class:`PaddingMasks`.

        Returns:
            features (B, C_l, H_l, W_l), masks (B, H_l, W_l) bool, positions (B, embed_dims, H_l, W_l).
        """
        # Given a padded batch, the ResNet zeroes the padded inputs of its spatial layers (exact padding);
        # the original runs it on the padded batch as it is (official). Unpadded batches need no mask.
        features = self[0](images, masks.mask if masks.exact and masks.has_padding else None)
        level_masks = [masks.at(f.shape[-2:]) for f in features]
        pos = [self[1](m).to(f.dtype) for f, m in zip(features, level_masks, strict=True)]
        return features, level_masks, pos
