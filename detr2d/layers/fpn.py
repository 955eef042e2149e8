"""FPN neck with mmdet's names and options: multi-level camera features of one width."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

EXTRA_CONVS = (False, "on_input", "on_output")


def conv_module(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A biased conv named ``conv`` inside its module: mmcv's ``ConvModule`` without norm or
    activation, so the state_dict reads ``<name>.conv.weight`` / ``<name>.conv.bias``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
    return nn.Sequential(OrderedDict(conv=conv))


class FPNNeck(nn.Module):
    """Feature pyramid (Lin et al., 2017), mmdet's ``FPN`` without norm/activation layers.

    Input levels ``start_level`` ... last get a lateral 1x1 conv; coarser laterals are upsampled
    (nearest, to the finer size) and added top-down; each sum goes through a 3x3 output conv. The
    ``num_outs - (len(in_channels) - start_level)`` extra levels are

    - ``add_extra_convs=False``: the last output subsampled by 2 (``max_pool2d(kernel 1, stride 2)``);
    - ``"on_input"`` / ``"on_output"``: stride-2 3x3 convs, the first on the last used input level /
      the last output, each further one on the previous extra level (after a ReLU when
      ``relu_before_extra_convs``; the first extra conv never gets one, as in mmdet). ``True`` means
      ``"on_input"``.

    Extra convs are stored after the output convs in ``fpn_convs`` (mmdet's checkpoint layout). The
    defaults are the settings of the published BEVFormer and DETR3D configs; those pass
    (``in_channels``, ``start_level``, ``num_outs``) = ([2048], 0, 1) for BEVFormer-tiny/small,
    ([512, 1024, 2048], 0, 4) for -base and ([256, 512, 1024, 2048], 1, 4) for DETR3D.

    Args:
        in_channels: channels of every input level, finest first.
        out_channels: channels of every output level.
        num_outs: number of output levels (>= ``len(in_channels) - start_level``); default that.
        start_level: index of the first input level used (earlier ones are accepted and ignored).
        add_extra_convs: ``False``, ``"on_input"``, ``"on_output"`` (or ``True`` = ``"on_input"``).
        relu_before_extra_convs: ReLU on the input of every extra conv but the first.

    Convolutions are Xavier-uniform initialized with zero bias (mmdet's FPN init).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int | None = None,
        start_level: int = 0,
        add_extra_convs: bool | str = "on_output",
        relu_before_extra_convs: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= start_level < len(in_channels):
            raise ValueError(
                f"start_level ({start_level}) must index one of the {len(in_channels)} input levels"
            )
        used = len(in_channels) - start_level
        num_outs = used if num_outs is None else num_outs
        if num_outs < used:
            raise ValueError(f"num_outs ({num_outs}) must be >= the number of used input levels ({used})")
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in EXTRA_CONVS:
            raise ValueError(f"add_extra_convs must be one of {EXTRA_CONVS} or True, got {add_extra_convs!r}")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for channels in self.in_channels[start_level:]:
            self.lateral_convs.append(conv_module(channels, out_channels, 1))
            self.fpn_convs.append(conv_module(out_channels, out_channels, 3))
        if add_extra_convs:
            for i in range(num_outs - used):
                first_on_input = i == 0 and add_extra_convs == "on_input"
                channels = self.in_channels[-1] if first_on_input else out_channels
                self.fpn_convs.append(conv_module(channels, out_channels, 3, stride=2))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args: features: ``len(in_channels)`` tensors (N, C_i, H_i, W_i), finest first.

        Returns:
            ``num_outs`` tensors (N, out_channels, H_l, W_l), finest first; extra levels have
            ``ceil(size / 2)`` of the level before.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature levels, got {len(features)}")
        for i, (x, channels) in enumerate(zip(features, self.in_channels, strict=True)):
            if x.dim() != 4 or x.shape[1] != channels:
                raise ValueError(f"feature level {i} must be (N, {channels}, H, W), got {tuple(x.shape)}")
        inputs = features[self.start_level :]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)]
        if not self.add_extra_convs:
            while len(outs) < self.num_outs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            return outs
        for i, conv in enumerate(self.fpn_convs[len(laterals) :]):
            if i == 0:
                outs.append(conv(inputs[-1] if self.add_extra_convs == "on_input" else outs[-1]))
            else:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return outs
