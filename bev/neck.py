"""FPN-style neck: multi-level camera features of one width from the backbone's levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FPNNeck(nn.Module):
    """Feature pyramid (Lin et al., 2017) as configured by BEVFormer and DETR3D.

    Every input level gets a lateral 1x1 conv; coarser laterals are upsampled (nearest) and added
    top-down; each sum goes through a 3x3 output conv. Levels beyond the inputs come from stride-2
    3x3 convs applied to the previous output (mmdet's ``add_extra_convs='on_output'``), with a ReLU
    before each when ``relu_before_extra_convs``.

    Args:
        in_channels: channels of the input levels, finest first.
        out_channels: channels of every output level.
        num_outs: number of output levels (>= ``len(in_channels)``); default ``len(in_channels)``.
        relu_before_extra_convs: ReLU on the input of each extra conv.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int | None = None,
        relu_before_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) == 0:
            raise ValueError("in_channels must name at least one input level")
        num_outs = len(in_channels) if num_outs is None else num_outs
        if num_outs < len(in_channels):
            raise ValueError(
                f"num_outs ({num_outs}) must be >= the number of input levels ({len(in_channels)})"
            )
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.extra_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
            for _ in range(num_outs - len(in_channels))
        )
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args: features: ``len(in_channels)`` tensors (N, C_i, H_i, W_i), finest first.

        Returns:
            ``num_outs`` tensors (N, out_channels, H_l, W_l), finest first.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature levels, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        for conv in self.extra_convs:
            x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
            outs.append(conv(x))
        return outs
