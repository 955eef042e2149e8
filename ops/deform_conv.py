"""Modulated deformable convolution (DCNv2): ``deform_conv2d`` in front of the reference, CPU and CUDA
backends, and ``ModulatedDeformConv2d`` (mmcv's ``ModulatedDeformConv2dPack``)."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from .deform_conv_native import deform_conv2d_native
from .deform_conv_reference import deform_conv2d_reference
from .functional import BACKENDS, available_backends, resolve_backend
from .validation import FLOAT_DTYPES

ENV_BACKEND = "DEFORMBEV_DCN_BACKEND"

Pair = tuple[int, int]


def resolve_deform_conv_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend of ``deform_conv2d`` on ``device``: the explicit choice, else ``$DEFORMBEV_DCN_BACKEND``,
    else the native kernel of that device when it built, else ``reference``."""
    if backend is None:
        backend = os.environ.get(ENV_BACKEND) or None
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"${ENV_BACKEND} must be one of {BACKENDS} or None, got {backend!r}")
    if backend is None:
        native = device.type if device.type in ("cpu", "cuda") else None
        return native if native in available_backends() else "reference"
    return resolve_backend(device, backend)


def _pair(name: str, value: int | tuple[int, int], minimum: int) -> Pair:
    original = value
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {original!r}")
    return pair


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_deform_conv_inputs(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int | Pair,
    padding: int | Pair,
    dilation: int | Pair,
    groups: int,
    deform_groups: int,
) -> tuple[Pair, Pair, Pair]:
    """Validate the arguments of :func:`deform_conv2d`; return (stride, padding, dilation) as pairs.

    Raises:
        ValueError: naming the argument and the expected shape, dtype or device.
    """
    named = {"input": input, "offset": offset, "mask": mask, "weight": weight}
    if bias is not None:
        named["bias"] = bias
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    stride_, padding_, dilation_ = (
        _pair("stride", stride, 1),
        _pair("padding", padding, 0),
        _pair("dilation", dilation, 1),
    )
    groups, deform_groups = _positive_int("groups", groups), _positive_int("deform_groups", deform_groups)
    if input.dim() != 4:
        raise ValueError(f"input must have shape (N, C, H, W), got {tuple(input.shape)}")
    n, c, height, width = input.shape
    if weight.dim() != 4:
        raise ValueError(f"weight must have shape (O, C / groups, kh, kw), got {tuple(weight.shape)}")
    out_channels, _, kernel_h, kernel_w = weight.shape
    if c == 0:
        raise ValueError(f"input must have at least one channel, got shape {tuple(input.shape)}")
    if c % groups or out_channels % groups:
        raise ValueError(
            f"groups ({groups}) must divide the input channels ({c}) and the output channels ({out_channels})"
        )
    if weight.shape[1] * groups != c or kernel_h == 0 or kernel_w == 0:
        raise ValueError(
            f"weight must have shape ({out_channels}, {c // groups}, kh >= 1, kw >= 1) for {c} input "
            f"channels and groups={groups}, got {tuple(weight.shape)}"
        )
    if c % deform_groups:
        raise ValueError(f"deform_groups ({deform_groups}) must divide the input channels ({c})")
    out_h = (height + 2 * padding_[0] - dilation_[0] * (kernel_h - 1) - 1) // stride_[0] + 1
    out_w = (width + 2 * padding_[1] - dilation_[1] * (kernel_w - 1) - 1) // stride_[1] + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"input {tuple(input.shape)} is too small for a {kernel_h}x{kernel_w} kernel with padding "
            f"{padding_} and dilation {dilation_}: the output would be {out_h}x{out_w}"
        )
    k = kernel_h * kernel_w
    expected = {
        "offset": (n, 2 * deform_groups * k, out_h, out_w),
        "mask": (n, deform_groups * k, out_h, out_w),
        "bias": (out_channels,),
    }
    layout = {
        "offset": "(N, 2 * deform_groups * kh * kw, Ho, Wo)",
        "mask": "(N, deform_groups * kh * kw, Ho, Wo)",
    }
    for name, shape in expected.items():
        if name in named and tuple(named[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} {layout.get(name, '(O,)')}, got {tuple(named[name].shape)}"
            )
    for name, t in named.items():
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
        if t.dtype != input.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but input has {input.dtype}")
        if t.device != input.device:
            raise ValueError(f"{name} is on {t.device} but input is on {input.device}")
    return stride_, padding_, dilation_


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Pair = 1,
    padding: int | Pair = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
    deform_groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2), the semantics of mmcv's ``modulated_deform_conv2d`` and
    torchvision's ``deform_conv2d``.

    ``out[n, o, i, j] = bias[o] + sum_{c, k} weight[o, c, k] * mask[n, g(c) * K + k, i, j] *
    input~[n, c](i * sh - ph + ki * dh + dy, j * sw - pw + kj * dw + dx)`` with K = kh * kw, k = ki * kw + kj,
    (dy, dx) = ``offset[n, 2 * (g * K + k) : 2 * (g * K + k) + 2, i, j]``, g(c) = c // (C / deform_groups)
    and ``input~`` bilinear in pixel coordinates, zero outside the image.

    Args:
        input: (N, C, H, W).
        offset: (N, 2 * deform_groups * kh * kw, Ho, Wo).
        mask: (N, deform_groups * kh * kw, Ho, Wo) (already a sigmoid in DCNv2).
        weight: (O, C / groups, kh, kw).
        bias: (O,) or None.
        stride, padding, dilation: an int or an (h, w) pair, as ``nn.Conv2d``.
        groups: convolution groups (divide C and O).
        deform_groups: offset groups (divide C); channel block g uses offsets and mask of group g.
        backend: 'reference', 'cpu', 'cuda' or None (``$DEFORMBEV_DCN_BACKEND``, else automatic).

    Returns:
        (N, O, Ho, Wo), Ho = (H + 2 ph - dh (kh - 1) - 1) // sh + 1 (likewise Wo); differentiable in
        input, offset, mask, weight and bias.

    Raises:
        ValueError: on malformed inputs (naming the argument and the expected shape).
    """
    pairs = check_deform_conv_inputs(
        input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups
    )
    args = (input, offset, mask, weight, bias, *pairs, groups, deform_groups)
    if resolve_deform_conv_backend(input.device, backend) == "reference":
        return deform_conv2d_reference(*args)
    return deform_conv2d_native(*args)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer that computes its own offsets and mask: mmcv's ``ModulatedDeformConv2dPack``.

    Parameters (checkpoint names): ``weight`` (O, C / groups, kh, kw), ``bias`` (O,) or None,
    ``conv_offset.weight`` (3 * G * K, C, kh, kw), ``conv_offset.bias`` (3 * G * K,) with K = kh * kw.
    ``conv_offset`` has the layer's kernel, stride, padding and dilation; its first 2 * G * K output
    channels are the offsets ((dy, dx) per group and kernel point; mmcv's ``cat(chunk(out, 3)[:2])``), the
    last G * K the mask logits (a sigmoid gives the mask). Init as mmcv: ``weight`` uniform in
    +-1/sqrt(C * kh * kw), ``bias`` and ``conv_offset`` zero (a plain convolution at the start).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as ``nn.Conv2d``.
        deform_groups: offset groups G (divide ``in_channels``).
        backend: op backend (None = automatic, see :func:`deform_conv2d`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Pair,
        stride: int | Pair = 1,
        padding: int | Pair = 0,
        dilation: int | Pair = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            _positive_int(name, value)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels")
        if in_channels % deform_groups:
            raise ValueError(f"deform_groups ({deform_groups}) must divide in_channels ({in_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        self.stride = _pair("stride", stride, 1)
        self.padding = _pair("padding", padding, 0)
        self.dilation = _pair("dilation", dilation, 1)
        self.groups = groups
        self.deform_groups = deform_groups
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(
            in_channels,
            3 * deform_groups * self.kernel_size[0] * self.kernel_size[1],
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's ``init_weights``."""
        stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -stdv, stdv)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, O, Ho, Wo)."""
        offset_and_mask = self.conv_offset(x)
        n_offsets = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, mask_logits = offset_and_mask.split([n_offsets, n_offsets // 2], dim=1)
        # Under autocast conv_offset may return a lower precision than x; the op needs one dtype.
        offset, mask = offset.to(x.dtype), mask_logits.sigmoid().to(x.dtype)
        return deform_conv2d(
            x,
            offset,
            mask,
            self.weight.to(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.deform_groups,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deform_groups={self.deform_groups}, bias={self.bias is not None}"
        )
