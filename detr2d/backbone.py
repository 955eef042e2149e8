"""ResNet backbones with torchvision's parameter names (no torchvision needed).

Normalization is frozen batch norm by default (the published recipe, which starts from ImageNet
weights) or trainable batch norm (``norm="bn"``: for training from scratch, where frozen identity
statistics leave a deep residual trunk unnormalized).

``ResNetBackbone(depth).body`` holds ``conv1``, ``bn1``, ``layer1`` ... ``layer4`` named exactly as
in ``torchvision.models.resnet`` (without ``fc``), so an ImageNet state_dict from torchvision loads
with :func:`load_imagenet_weights`, and Deformable DETR checkpoints read ``backbone.0.body.*``.
Given a padding mask, every spatial operation reads zeros at padded positions (see
:mod:`detr2d.padding`), so a padded image gives the features of that image alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .padding import PaddingMasks
from .position_encoding import PositionEmbeddingSine

LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers.

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (no ``num_batches_tracked``);
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with eps 1e-5.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # torchvision's BatchNorm2d has it
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


NORMS = ("frozen_bn", "bn")


def _norm(kind: str, num_features: int) -> nn.Module:
    """The normalization layer ``kind`` (one of :data:`NORMS`) over ``num_features`` channels."""
    return FrozenBatchNorm2d(num_features) if kind == "frozen_bn" else nn.BatchNorm2d(num_features)


def _identity(x: Tensor) -> Tensor:
    return x


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, in_ch: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None, norm: str
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = _norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: Tensor, masks: PaddingMasks | None = None) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride); padded inputs are zeroed first."""
        zero = masks.zero if masks is not None else _identity
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(zero(x))))
        out = self.bn2(self.conv2(zero(out)))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, possibly dilated) -> 1x1 with a residual (ResNet-50/101, torchvision v1.5)."""

    expansion = 4

    def __init__(
        self, in_ch: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None, norm: str
    ):
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = _norm(norm, planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = _norm(norm, planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor, masks: PaddingMasks | None = None) -> Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H / stride, W / stride); 1x1 convs need no masking."""
        zero = masks.zero if masks is not None else _identity
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(zero(out))))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


ARCHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNetBody(nn.Module):
    """The ResNet trunk up to ``last_layer`` (torchvision names; no ``avgpool``/``fc``).

    Args:
        depth: 18, 34, 50 or 101.
        last_layer: how many of layer1..layer4 to build (1-4).
        dilation: replace the stride of layer4 by dilation 2 (DC5), as torchvision's
            ``replace_stride_with_dilation=[False, False, True]``.
        norm: ``"frozen_bn"`` or ``"bn"`` (see the module docstring).
    """

    def __init__(
        self, depth: int, last_layer: int = 4, dilation: bool = False, norm: str = "frozen_bn"
    ) -> None:
        super().__init__()
        block, counts = ARCHS[depth]
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch, cur_dilation = 64, 1
        for i in range(last_layer):
            planes, stride = 64 * 2**i, (1 if i == 0 else 2)
            prev_dilation = cur_dilation
            if dilation and i == 3:
                cur_dilation, stride = cur_dilation * stride, 1
            downsample = None
            if stride != 1 or in_ch != planes * block.expansion:
                downsample = nn.Sequential(
                    _conv1x1(in_ch, planes * block.expansion, stride),
                    _norm(norm, planes * block.expansion),
                )
            blocks = [block(in_ch, planes, stride, prev_dilation, downsample, norm)]
            in_ch = planes * block.expansion
            blocks += [block(in_ch, planes, 1, cur_dilation, None, norm) for _ in range(1, counts[i])]
            self.add_module(LAYER_NAMES[i], nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor, masks: PaddingMasks | None = None) -> dict[str, Tensor]:
        """(B, 3, H, W) -> {layer name: (B, C_l, H / s_l, W / s_l)} for every built layer."""
        zero = masks.zero if masks is not None else _identity
        x = F.relu(self.bn1(self.conv1(zero(x))))
        x = self.maxpool(zero(x))  # activations are >= 0, so zeros act like the -inf pool padding
        out = {}
        for name in LAYER_NAMES:
            if not hasattr(self, name):
                break
            for block in getattr(self, name):
                x = block(x, masks)
            out[name] = x
        return out


class ResNetBackbone(nn.Module):
    """A ResNet returning the feature maps of ``return_layers``.

    The last ``trainable_layers`` stages (counted from layer4 down to the stem) get gradients; the
    published recipe trains layer2-4 (3) on top of ImageNet weights; from scratch, train all (5).

    Args:
        depth: 18, 34, 50 or 101.
        return_layers: increasing subset of ("layer1", "layer2", "layer3", "layer4").
        dilation: dilate layer4 instead of striding it (DC5; its stride becomes 16).
        train_backbone: False freezes every stage (whatever ``trainable_layers`` says).
        norm: ``"frozen_bn"`` (published) or ``"bn"`` (trainable batch norm, for training from scratch;
            in training mode padded pixels count in the batch statistics).
        trainable_layers: 0-5, how many of (layer4, layer3, layer2, layer1, stem) learn.

    Attributes:
        body: the :class:`ResNetBody` (layers after the last returned one are not built).
        strides: output stride of each returned layer.
        num_channels: channels of each returned layer.
    """

    def __init__(
        self,
        depth: int = 50,
        return_layers: tuple[str, ...] = ("layer2", "layer3", "layer4"),
        dilation: bool = False,
        train_backbone: bool = True,
        norm: str = "frozen_bn",
        trainable_layers: int = 3,
    ) -> None:
        super().__init__()
        if depth not in ARCHS:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHS)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"backbone norm must be one of {NORMS}, got {norm!r}")
        if isinstance(trainable_layers, bool) or trainable_layers not in range(6):
            raise ValueError(f"trainable_layers must be an int in 0..5, got {trainable_layers!r}")
        return_layers = tuple(return_layers)
        if (
            not return_layers
            or any(n not in LAYER_NAMES for n in return_layers)
            or list(return_layers) != sorted(set(return_layers))
        ):
            raise ValueError(
                f"return_layers must be an increasing subset of {LAYER_NAMES}, got {return_layers}"
            )
        self.return_layers = return_layers
        idx = [LAYER_NAMES.index(n) for n in return_layers]
        self.body = ResNetBody(depth, last_layer=idx[-1] + 1, dilation=dilation, norm=norm)
        expansion = ARCHS[depth][0].expansion
        all_strides = [4, 8, 16, 16 if dilation else 32]
        self.strides = [all_strides[i] for i in idx]
        self.num_channels = [64 * 2**i * expansion for i in idx]
        trainable = ("layer4", "layer3", "layer2", "layer1", "stem")[
            : trainable_layers if train_backbone else 0
        ]
        stage = {name: name if name in LAYER_NAMES else "stem" for name, _ in self.body.named_children()}
        self._frozen_modules = [m for name, m in self.body.named_children() if stage[name] not in trainable]
        for module in self._frozen_modules:
            module.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode (their batch norm statistics
        do not move)."""
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Feature maps of the returned layers.

        Args:
            x: (B, 3, H, W) images.
            mask: (B, H, W) bool, True on padding, or None. Padded positions of every spatial
                operation's input, and of the outputs, are zero.

        Returns:
            One (B, C_l, ceil(H / s_l), ceil(W / s_l)) tensor per return layer.
        """
        masks = PaddingMasks(mask) if mask is not None else None
        out = self.body(x, masks)
        return [masks.zero(out[n]) if masks is not None else out[n] for n in self.return_layers]


def load_imagenet_weights(backbone: ResNetBackbone, path_or_state: str | os.PathLike | Mapping) -> list[str]:
    """Load a torchvision-format ImageNet ResNet state_dict into ``backbone.body``.

    ``fc.*`` and ``num_batches_tracked`` entries are ignored, as are the weights of layers the
    body does not build. Anything else that does not match raises ``ValueError``.

    Args:
        backbone: the backbone to fill.
        path_or_state: a file written by ``torch.save(resnet.state_dict())`` (read with
            ``weights_only=True``) or the state_dict itself.

    Returns:
        The sorted names of the ignored entries.
    """
    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
    else:
        state = torch.load(path_or_state, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"{path_or_state} does not hold a state_dict (got {type(state).__name__})")
    built = {n for n in LAYER_NAMES if hasattr(backbone.body, n)}
    ignored = sorted(
        k
        for k in state
        if k.startswith("fc.")
        or k.endswith("num_batches_tracked")
        or (k.split(".")[0] in LAYER_NAMES and k.split(".")[0] not in built)
    )
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    own = backbone.body.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            "ImageNet weights do not fit the backbone: "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)}), "
            f"shape mismatches {mismatched[:10]} ({len(mismatched)})"
        )
    backbone.body.load_state_dict(state, strict=True)
    return ignored


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
            features (B, C_l, H_l, W_l), masks (B, H_l, W_l) bool, positions (B, d_model, H_l, W_l).
        """
        features = self[0](images, masks.mask)
        level_masks = [masks.at(f.shape[-2:]) for f in features]
        pos = [self[1](m).to(f.dtype) for f, m in zip(features, level_masks, strict=True)]
        return features, level_masks, pos
