"""VoVNetV2 with effective squeeze-excitation (Lee & Park, CenterMask), the image backbone of PETR / PETRv2.

The module names are those of the released checkpoints (``img_backbone.`` + this module's keys, slashes
included: ``stem.stem_1/conv.weight``, ``stage3.OSA3_2.layers.4.OSA3_2_4/norm.running_var``,
``stage5.OSA5_1.concat.OSA5_1_concat/conv.weight``, ``stage2.OSA2_1.ese.fc.bias``), so a released
state_dict loads after stripping that one prefix.

Structure: a stem of three 3x3 conv-BN-ReLU (strides 2, 1, 2), then stages 2-5; stages 3-5 start with a
3x3 stride-2 max-pool (ceil rounding). A stage is a chain of one-shot-aggregation (OSA) modules: five
3x3 conv-BN-ReLU layers in sequence, their input and five outputs concatenated and fused by a 1x1
conv-BN-ReLU, then eSE (global average, 1x1 conv with bias, hard sigmoid ``relu6(x + 3) / 6``, multiply)
and, in every module but the first of a stage, an identity shortcut.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

STAGE_NAMES = ("stage2", "stage3", "stage4", "stage5")


@dataclass(frozen=True)
class VoVNetSpec:
    """Widths and depths of a VoVNet.

    Attributes:
        stem_channels: output channels of the three stem convs.
        stage_channels: width of the 3x3 layers of each stage's OSA modules.
        out_channels: output (concat 1x1 conv) channels of each stage.
        layers_per_block: 3x3 layers per OSA module.
        blocks_per_stage: OSA modules per stage.
    """

    stem_channels: tuple[int, int, int]
    stage_channels: tuple[int, int, int, int]
    out_channels: tuple[int, int, int, int]
    layers_per_block: int
    blocks_per_stage: tuple[int, int, int, int]


#: VoVNetV2-99-eSE (``V-99-eSE`` of the PETR code), the backbone of every published PETR VoVNet config.
VOVNET99_ESE = VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 3, 9, 3))


def _conv_norm_relu(
    in_channels: int, out_channels: int, name: str, kernel_size: int = 3, stride: int = 1
) -> list[tuple[str, nn.Module]]:
    """``<name>/conv`` (no bias), ``<name>/norm`` (BatchNorm), ``<name>/relu``."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    return [
        (f"{name}/conv", conv),
        (f"{name}/norm", nn.BatchNorm2d(out_channels)),
        (f"{name}/relu", nn.ReLU()),
    ]


class EffectiveSE(nn.Module):
    """eSE: ``x * hard_sigmoid(fc(mean over H, W of x))`` with a biased 1x1 conv ``fc`` (C -> C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        gate = F.relu6(self.fc(x.mean(dim=(2, 3), keepdim=True)) + 3.0) / 6.0
        return x * gate


class OSAModule(nn.Module):
    """One-shot aggregation: ``layers_per_block`` 3x3 layers, concat with the input, 1x1 fuse, eSE, shortcut.

    Args:
        in_channels, stage_channels, out_channels: input, 3x3-layer and output widths.
        layers_per_block: 3x3 layers.
        name: the module's checkpoint name (``OSA<stage>_<index>``), the prefix of its layers' names.
        identity: add the input to the output (needs ``in_channels == out_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        stage_channels: int,
        out_channels: int,
        layers_per_block: int,
        name: str,
        identity: bool,
    ) -> None:
        super().__init__()
        if identity and in_channels != out_channels:
            raise ValueError(
                f"{name}: an identity shortcut needs in == out channels, got {in_channels} -> {out_channels}"
            )
        self.identity = identity
        self.layers = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    _conv_norm_relu(in_channels if i == 0 else stage_channels, stage_channels, f"{name}_{i}")
                )
            )
            for i in range(layers_per_block)
        )
        concat_in = in_channels + layers_per_block * stage_channels
        self.concat = nn.Sequential(
            OrderedDict(_conv_norm_relu(concat_in, out_channels, f"{name}_concat", 1))
        )
        self.ese = EffectiveSE(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W)."""
        outputs = [x]
        feature = x
        for layer in self.layers:
            feature = layer(feature)
            outputs.append(feature)
        out = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return out + x if self.identity else out


class VoVNet(nn.Module):
    """VoVNetV2 (eSE) returning the feature maps of ``out_features``.

    Args:
        spec: widths and depths (default VoVNetV2-99-eSE).
        out_features: increasing subset of ``STAGE_NAMES`` (PETR: ``("stage4", "stage5")``).
        frozen_stages: -1 trains everything (every published PETR config); k >= 0 freezes the stem and
            stages 2 .. k+1 (parameters without gradient, batch norms in eval mode).
        norm_eval: every BatchNorm stays in eval mode in training (running statistics fixed; its affine
            parameters still learn), as in the PETR configs.

    Attributes:
        num_channels, strides: channels and stride of each returned map (stage4: 768 / 16, stage5:
            1024 / 32 for V-99).
    """

    def __init__(
        self,
        spec: VoVNetSpec = VOVNET99_ESE,
        out_features: Sequence[str] = ("stage4", "stage5"),
        frozen_stages: int = -1,
        norm_eval: bool = True,
    ) -> None:
        super().__init__()
        out_features = tuple(out_features)
        if (
            not out_features
            or any(n not in STAGE_NAMES for n in out_features)
            or list(out_features) != sorted(set(out_features))
        ):
            raise ValueError(
                f"out_features must be an increasing subset of {STAGE_NAMES}, got {out_features}"
            )
        if frozen_stages not in range(-1, len(STAGE_NAMES) + 1):
            raise ValueError(f"frozen_stages must be in -1..{len(STAGE_NAMES)}, got {frozen_stages}")
        self.out_features = out_features
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        s0, s1, s2 = spec.stem_channels
        stem = [
            *_conv_norm_relu(3, s0, "stem_1", stride=2),
            *_conv_norm_relu(s0, s1, "stem_2"),
            *_conv_norm_relu(s1, s2, "stem_3", stride=2),
        ]
        self.stem = nn.Sequential(OrderedDict(stem))
        in_channels = s2
        for index, name in enumerate(STAGE_NAMES):
            number = index + 2
            stage = nn.Sequential()
            if number > 2:
                stage.add_module("Pooling", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            for block in range(spec.blocks_per_stage[index]):
                module_name = f"OSA{number}_{block + 1}"
                stage.add_module(
                    module_name,
                    OSAModule(
                        in_channels,
                        spec.stage_channels[index],
                        spec.out_channels[index],
                        spec.layers_per_block,
                        module_name,
                        identity=block > 0,
                    ),
                )
                in_channels = spec.out_channels[index]
            self.add_module(name, stage)
        self.num_channels = [spec.out_channels[STAGE_NAMES.index(n)] for n in out_features]
        self.strides = [4 * 2 ** STAGE_NAMES.index(n) for n in out_features]
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.train()

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *(getattr(self, n) for n in STAGE_NAMES[: self.frozen_stages])]

    def train(self, mode: bool = True) -> VoVNet:
        """Like ``nn.Module.train``; frozen stages (and with ``norm_eval`` every BatchNorm) stay in eval."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> one (B, C_s, H_s, W_s) map per ``out_features`` entry."""
        outputs = []
        x = self.stem(x)
        for name in STAGE_NAMES[: STAGE_NAMES.index(self.out_features[-1]) + 1]:
            x = getattr(self, name)(x)
            if name in self.out_features:
                outputs.append(x)
        return outputs
