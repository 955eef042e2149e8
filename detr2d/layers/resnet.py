"""ResNet backbones with torchvision's and mmdet's parameter names (no torchvision or mmcv needed).

``ResNetBackbone(depth).body`` holds ``conv1``, ``bn1``, ``layer1`` ... ``layer4`` named exactly as in
``torchvision.models.resnet`` and ``mmdet.models.backbones.ResNet`` (without ``fc``); Deformable DETR
checkpoints read them under ``backbone.0.body.``, BEVFormer / DETR3D checkpoints under
``img_backbone.``. The mmdet options the published 3D detectors use are here too:

- ``style``: ``"pytorch"`` puts a bottleneck's stride on its 3x3 conv (torchvision, ResNet v1.5),
  ``"caffe"`` on its first 1x1 conv (the MSRA / detectron weights, BEVFormer-small/base, DETR3D);
- ``stage_with_dcn``: in the chosen stages, conv2 of every bottleneck is a modulated deformable
  convolution (:class:`ops.ModulatedDeformConv2d`, state ``conv2.weight``,
  ``conv2.conv_offset.{weight,bias}``);
- ``norm``: frozen batch norm (``"frozen_bn"``: the published recipe, which starts from pretrained
  weights; no ``num_batches_tracked`` entries) or ``nn.BatchNorm2d`` (``"bn"``: mmdet's names), with
  ``norm_eval`` keeping every batch norm in eval mode (mmdet's ``norm_eval=True``);
- ``trainable_layers``: the frozen stages (mmdet's ``frozen_stages=1`` is ``trainable_layers=3``).

Weights come from :func:`load_pretrained` (torchvision ImageNet files, ``torchvision://resnet50``-style
names, URLs, or detector checkpoints whose backbone sits under a known prefix); configs call
:func:`check_initialization` first, so that fixed batch-norm statistics never run without weights.

Given a padding mask, every spatial operation reads zeros at padded positions (see
:mod:`detr2d.layers.padding`), so a padded image gives the features of that image alone; this holds for the
deformable convolutions too (they sample zeros outside the valid image either way).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ops

from ..runtime.checkpoint import load_torch_file, read_state_dict
from .padding import PaddingMasks

LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers.

    Buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (no ``num_batches_tracked``);
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with eps 1e-5.
    """

    frozen_batch_norm = True  # the inference fast path folds it into the convolution before it

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
STYLES = ("pytorch", "caffe")
NO_DCN = (False, False, False, False)


def _norm(kind: str, num_features: int) -> nn.Module:
    """The normalization layer ``kind`` (one of :data:`NORMS`) over ``num_features`` channels."""
    return FrozenBatchNorm2d(num_features) if kind == "frozen_bn" else nn.BatchNorm2d(num_features)


def _identity(x: Tensor) -> Tensor:
    return x


def _conv3x3(
    in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1, deformable: bool = False
) -> nn.Module:
    """3x3 conv without bias, padded by its dilation; ``deformable``: :class:`ops.ModulatedDeformConv2d`."""
    conv = ops.ModulatedDeformConv2d if deformable else nn.Conv2d
    return conv(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34); the first one strides.

    ``style`` changes nothing here (as in mmdet); deformable convolutions are not offered (``dcn``
    must be False).
    """

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm: str,
        style: str = "pytorch",
        dcn: bool = False,
    ) -> None:
        super().__init__()
        if dcn:
            raise ValueError("stage_with_dcn needs bottleneck blocks (ResNet-50/101); ResNet-18/34 have none")
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
    """1x1 -> 3x3 (possibly dilated / deformable) -> 1x1 with a residual (ResNet-50/101).

    ``style="pytorch"`` strides the 3x3 conv (torchvision v1.5), ``"caffe"`` the first 1x1 conv;
    ``dcn`` makes the 3x3 conv an :class:`ops.ModulatedDeformConv2d` (mmdet's DCNv2).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        dilation: int,
        downsample: nn.Module | None,
        norm: str,
        style: str = "pytorch",
        dcn: bool = False,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = _conv1x1(in_ch, planes, stride_1x1)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3, dilation, deformable=dcn)
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
    """The ResNet trunk up to ``last_layer`` (torchvision / mmdet names; no ``avgpool``/``fc``).

    Args:
        depth: 18, 34, 50 or 101.
        last_layer: how many of layer1..layer4 to build (1-4).
        dilation: replace the stride of layer4 by dilation 2 (DC5), as torchvision's
            ``replace_stride_with_dilation=[False, False, True]``.
        norm: ``"frozen_bn"`` or ``"bn"`` (see the module docstring).
        style: ``"pytorch"`` or ``"caffe"`` (where a bottleneck strides).
        stage_with_dcn: per layer1..layer4, whether its blocks' conv2 is deformable.
    """

    def __init__(
        self,
        depth: int,
        last_layer: int = 4,
        dilation: bool = False,
        norm: str = "frozen_bn",
        style: str = "pytorch",
        stage_with_dcn: Sequence[bool] = NO_DCN,
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
            options = {"norm": norm, "style": style, "dcn": bool(stage_with_dcn[i])}
            blocks = [block(in_ch, planes, stride, prev_dilation, downsample, **options)]
            in_ch = planes * block.expansion
            blocks += [block(in_ch, planes, 1, cur_dilation, None, **options) for _ in range(1, counts[i])]
            self.add_module(LAYER_NAMES[i], nn.Sequential(*blocks))
        for name, m in self.named_modules():
            # a deformable conv's offset branch keeps its own (zero) initialization
            if isinstance(m, nn.Conv2d) and not name.endswith("conv_offset"):
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
    published recipes train layer2-4 (3; mmdet's ``frozen_stages=1``) on top of pretrained weights;
    from scratch, train all (5).

    Args:
        depth: 18, 34, 50 or 101.
        return_layers: increasing subset of ("layer1", "layer2", "layer3", "layer4").
        dilation: dilate layer4 instead of striding it (DC5; its stride becomes 16).
        train_backbone: False freezes every stage (whatever ``trainable_layers`` says).
        norm: ``"frozen_bn"`` (published) or ``"bn"`` (``nn.BatchNorm2d``: trainable, for training
            from scratch, or with ``norm_eval`` mmdet's setting; in training mode padded pixels count
            in the batch statistics).
        trainable_layers: 0-5, how many of (layer4, layer3, layer2, layer1, stem) learn.
        style: ``"pytorch"`` (stride on a bottleneck's 3x3 conv) or ``"caffe"`` (on its first 1x1).
        stage_with_dcn: four bools (layer1..layer4): conv2 of every block of a True stage is an
            :class:`ops.ModulatedDeformConv2d`; ResNet-50/101 only. BEVFormer: (False, False, True, True).
        norm_eval: every ``nn.BatchNorm2d`` keeps its running statistics (eval mode, even in training)
            and its affine parameters (no gradient): mmdet's ``norm_cfg=dict(requires_grad=False),
            norm_eval=True`` of the published BEVFormer / DETR3D backbones, with mmdet's state_dict
            (``num_batches_tracked`` included).

    Attributes:
        body: the :class:`ResNetBody` (layers after the last returned one are not built).
        strides: output stride of each returned layer.
        num_channels: channels of each returned layer.
        depth, style: as given.
    """

    def __init__(
        self,
        depth: int = 50,
        return_layers: tuple[str, ...] = ("layer2", "layer3", "layer4"),
        dilation: bool = False,
        train_backbone: bool = True,
        norm: str = "frozen_bn",
        trainable_layers: int = 3,
        style: str = "pytorch",
        stage_with_dcn: Sequence[bool] = NO_DCN,
        norm_eval: bool = False,
    ) -> None:
        super().__init__()
        if depth not in ARCHS:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHS)}, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"backbone norm must be one of {NORMS}, got {norm!r}")
        if style not in STYLES:
            raise ValueError(f"backbone style must be one of {STYLES}, got {style!r}")
        if len(stage_with_dcn) != 4 or not all(isinstance(v, bool) for v in stage_with_dcn):
            raise ValueError(f"stage_with_dcn must be four bools (layer1..layer4), got {stage_with_dcn!r}")
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
        self.depth, self.style, self.norm, self.norm_eval = depth, style, norm, norm_eval
        self.return_layers = return_layers
        idx = [LAYER_NAMES.index(n) for n in return_layers]
        self.body = ResNetBody(depth, idx[-1] + 1, dilation, norm, style, tuple(stage_with_dcn))
        if norm_eval:  # mmdet's requires_grad=False: the affine parameters stay as loaded
            for module in self.body.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.requires_grad_(False)
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
        """Like ``nn.Module.train``, but frozen stages (and with ``norm_eval`` every batch norm) stay
        in eval mode, so their batch norm statistics do not move."""
        super().train(mode)
        for module in self._frozen_modules:
            module.eval()
        if self.norm_eval:
            for module in self.body.modules():
                if isinstance(module, nn.BatchNorm2d):
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


# torchvision's ImageNet weights (IMAGENET1K_V1, the ones mmcv's torchvision:// names load); the
# 8 hex digits after the dash are the start of the file's SHA-256, checked on download.
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
TORCHVISION_SCHEME = "torchvision://"
# Where detector checkpoints keep their image backbone: BEVFormer / DETR3D, Deformable DETR, mmdet
# (FCOS3D, ...). The first prefix any key starts with is stripped; keys outside it are ignored.
BACKBONE_PREFIXES = ("img_backbone.", "backbone.0.body.", "backbone.")
# Body entries a file may lack: zero-initialized offsets (ImageNet weights into a DCN ResNet start as
# plain convolutions, as in mmdet) and batch-norm counters.
_MAY_BE_MISSING = (".conv_offset.weight", ".conv_offset.bias", "num_batches_tracked")
_LIST_AT_MOST = 8


def _short(keys: Sequence[str]) -> str:
    more = f" ... (+{len(keys) - _LIST_AT_MOST} more)" if len(keys) > _LIST_AT_MOST else ""
    return "[" + ", ".join(keys[:_LIST_AT_MOST]) + more + "]"


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_pretrained` did; key names are relative to ``backbone.body``.

    Attributes:
        source: the file, URL or ``torchvision://`` name (with its URL) the weights came from.
        prefix: the prefix stripped from the file's keys (``""``: the keys were at the top level).
        loaded: body entries set from the file.
        missing: body entries the file does not hold (kept as initialized).
        unexpected: file entries (under the prefix) the body has no place for.
        ignored: file entries deliberately unused: the classifier ``fc.*``, layers the body does not
            build, ``num_batches_tracked`` without a place, and keys outside the prefix.
    """

    source: str
    prefix: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]

    def __str__(self) -> str:
        where = f" under {self.prefix!r}" if self.prefix else ""
        return (
            f"backbone weights from {self.source}{where}: {len(self.loaded)} loaded, "
            f"{len(self.missing)} missing {_short(self.missing)}, {len(self.unexpected)} unexpected "
            f"{_short(self.unexpected)}, {len(self.ignored)} ignored"
        )


def _torchvision_url(name: str) -> str:
    arch = name.removeprefix(TORCHVISION_SCHEME)
    if arch not in TORCHVISION_URLS:
        known = ", ".join(TORCHVISION_SCHEME + a for a in TORCHVISION_URLS)
        raise ValueError(f"unknown pretrained weights {name!r}; known names: {known}")
    return TORCHVISION_URLS[arch]


def _read_weights(source: str | os.PathLike | Mapping) -> tuple[str, dict[str, Tensor]]:
    """(description, state_dict) of ``source``; unwraps mmdet's ``state_dict`` and DETR's ``model``."""
    if isinstance(source, Mapping):
        where, obj = "the given state_dict", source
    else:
        text = os.fspath(source)
        url = _torchvision_url(text) if text.startswith(TORCHVISION_SCHEME) else text
        where = text if url == text else f"{text} ({url})"
        if url.startswith(("http://", "https://")):
            try:  # Deformable DETR files also hold their argparse.Namespace of arguments
                with torch.serialization.safe_globals([argparse.Namespace]):
                    obj = torch.hub.load_state_dict_from_url(
                        url, map_location="cpu", check_hash=True, weights_only=True
                    )
            except Exception as error:
                raise ValueError(f"cannot fetch pretrained weights {where}: {error}") from error
        elif os.path.exists(text):
            obj = load_torch_file(text, "pretrained weights")
        else:
            raise FileNotFoundError(
                f"pretrained weights file not found: {text} (give a file, an http(s):// URL or one "
                f"of {', '.join(TORCHVISION_SCHEME + a for a in TORCHVISION_URLS)})"
            )
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # mmcv / mmdet checkpoints
    try:
        return where, read_state_dict(obj)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def load_pretrained(
    backbone: ResNetBackbone, source: str | os.PathLike | Mapping, strict: bool = True
) -> LoadReport:
    """Fill ``backbone.body`` from pretrained weights.

    Args:
        backbone: the backbone to fill.
        source: one of
            - a ``torchvision://resnet{18,34,50,101}`` name: torchvision's ImageNet file (see
              :data:`TORCHVISION_URLS`), downloaded once into the torch hub cache with its hash checked;
            - an ``http(s)://`` URL of a checkpoint (same cache and hash check);
            - a local file, read with ``torch.load(weights_only=True)``: a torchvision state_dict, a
              Deformable DETR ``{'model': ...}`` file or an mmdet-style ``{'state_dict': ...}``
              checkpoint (FCOS3D, BEVFormer, DETR3D); backbone keys under one of
              :data:`BACKBONE_PREFIXES` are taken from under it;
            - the state_dict itself.
        strict: raise when a body entry other than a deformable conv's offsets (zero-initialized,
            so the conv starts as a plain one) or a ``num_batches_tracked`` is missing, or when a
            file entry under the prefix has no place. Shape mismatches always raise.

    Returns:
        The :class:`LoadReport`.

    Raises:
        FileNotFoundError: ``source`` names no file, URL or known torchvision name.
        ValueError: naming ``source``: unreadable, not a state_dict, an unknown torchvision name, one
            that does not fit the backbone's depth or style, shape mismatches, or (``strict``) keys
            that do not match.
    """
    if isinstance(source, str) and source.startswith(TORCHVISION_SCHEME):
        arch = source.removeprefix(TORCHVISION_SCHEME)
        _torchvision_url(source)
        if arch != f"resnet{backbone.depth}":
            raise ValueError(f"{source} holds a {arch}, but the backbone is a resnet{backbone.depth}")
        if backbone.style != "pytorch":
            raise ValueError(
                f"{source} holds pytorch-style weights (stride on the 3x3 conv); the backbone is "
                f"{backbone.style!r}-style: give caffe-style weights (a file or URL) or use style='pytorch'"
            )
    where, state = _read_weights(source)
    prefix = next((p for p in BACKBONE_PREFIXES if any(k.startswith(p) for k in state)), "")
    own = backbone.body.state_dict()
    built = {n for n in LAYER_NAMES if hasattr(backbone.body, n)}
    ignored, entries = [], {}
    for key, value in state.items():
        name = key.removeprefix(prefix)
        unused = (
            not key.startswith(prefix)
            or name.startswith("fc.")
            or (name.split(".")[0] in LAYER_NAMES and name.split(".")[0] not in built)
            or (name.endswith("num_batches_tracked") and name not in own)
        )
        if unused:
            ignored.append(key)
        else:
            entries[name] = value
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs backbone {tuple(own[k].shape)}"
        for k, v in entries.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise ValueError(f"{where}: {len(mismatched)} shape mismatches {_short(mismatched)}")
    missing = [k for k in own if k not in entries]
    unexpected = [k for k in entries if k not in own]
    required = [k for k in missing if not k.endswith(_MAY_BE_MISSING)]
    if strict and (required or unexpected):
        hint = (
            " (deformable conv offsets: does stage_with_dcn match the file?)"
            if any("conv_offset" in k for k in unexpected)
            else ""
        )
        raise ValueError(
            f"{where} does not fit the backbone{hint}: {len(required)} missing {_short(required)}, "
            f"{len(unexpected)} unexpected {_short([prefix + k for k in unexpected])}"
        )
    loaded = [k for k in own if k in entries]
    backbone.body.load_state_dict({k: entries[k] for k in loaded}, strict=False)
    return LoadReport(where, prefix, tuple(loaded), tuple(missing), tuple(unexpected), tuple(ignored))


# The former name, imported by detr2d/__init__.py and bev/builder.py until they import load_pretrained.
load_imagenet_weights = load_pretrained


def check_initialization(norm: str, pretrained: str | os.PathLike | None, norm_eval: bool = False) -> None:
    """Refuse a backbone whose batch norm cannot learn and that gets no weights.

    Frozen batch norm (``norm="frozen_bn"``, or ``"bn"`` with ``norm_eval``) keeps the statistics it
    was built with; without pretrained weights those are the identity, so the deep residual trunk runs
    unnormalized and training goes nowhere. Configs call this before building the model; their
    defaults name real weights, so a from-scratch run needs an explicit ``model.pretrained=none``
    (which arrives here as None) together with trainable batch norm.

    Args:
        norm: the backbone's ``norm`` (one of :data:`NORMS`).
        pretrained: a :func:`load_pretrained` source string (file, URL, ``torchvision://`` name), or
            None for no weights.
        norm_eval: the backbone's ``norm_eval``.

    Raises:
        ValueError: ``norm`` is unknown; an unknown ``torchvision://`` name; fixed statistics without
            weights (the message says how to give weights or choose trainable batch norm).
        FileNotFoundError: ``pretrained`` is neither a URL nor a ``torchvision://`` name nor a file.
    """
    if norm not in NORMS:
        raise ValueError(f"backbone norm must be one of {NORMS}, got {norm!r}")
    if pretrained is None:
        if norm == "frozen_bn" or norm_eval:
            fixed = "frozen batch norm" if norm == "frozen_bn" else "batch norm with norm_eval"
            raise ValueError(
                f"the backbone uses {fixed} (fixed statistics) but no pretrained weights: give weights "
                "with model.pretrained=torchvision://resnet50 (the backbone's depth), a checkpoint file "
                "or a URL, or choose trainable batch norm with model.backbone_norm=bn; a from-scratch run "
                "needs model.pretrained=none set explicitly together with model.backbone_norm=bn"
            )
        return
    if not isinstance(pretrained, str | os.PathLike):
        raise ValueError(
            f"model.pretrained must be a file, URL, torchvision:// name or none, got {pretrained!r}"
        )
    text = os.fspath(pretrained)
    if text.startswith(TORCHVISION_SCHEME):
        _torchvision_url(text)
    elif not text.startswith(("http://", "https://")) and not os.path.isfile(text):
        raise FileNotFoundError(
            f"model.pretrained: no such file {text} (give a file, an http(s):// URL, a "
            f"torchvision://resnetN name, or none for no weights)"
        )


def initialize_backbone(backbone: ResNetBackbone, pretrained: str | os.PathLike | None) -> LoadReport | None:
    """Start a fresh training run's backbone: refuse fixed batch-norm statistics without weights
    (:func:`check_initialization`), then load ``pretrained`` (:func:`load_pretrained`) when given.

    Returns:
        The load report, or None when ``pretrained`` is None (trainable batch norm from scratch).
    """
    check_initialization(backbone.norm, pretrained, backbone.norm_eval)
    return None if pretrained is None else load_pretrained(backbone, pretrained)
