"""Random inputs of the modulated deformable convolution for the tests of every backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

NAMES = ("output", "grad_input", "grad_offset", "grad_mask", "grad_weight", "grad_bias")


@dataclass
class DcnCase:
    input: torch.Tensor  # (N, C, H, W)
    offset: torch.Tensor  # (N, 2 * G * K, Ho, Wo)
    mask: torch.Tensor  # (N, G * K, Ho, Wo)
    weight: torch.Tensor  # (O, C / groups, kh, kw)
    bias: torch.Tensor | None  # (O,)
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    deform_groups: int

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in (self.input, self.offset, self.mask, self.weight, self.bias) if t is not None)

    def kwargs(self) -> dict:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
            "deform_groups": self.deform_groups,
        }

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> DcnCase:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            input=move(self.input),
            offset=move(self.offset),
            mask=move(self.mask),
            weight=move(self.weight),
            bias=move(self.bias),
        )


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def random_dcn_case(
    seed: int,
    batch: int = 2,
    channels: int = 4,
    out_channels: int = 6,
    size: tuple[int, int] = (7, 9),
    kernel: tuple[int, int] = (3, 3),
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    deform_groups: int = 1,
    offset_scale: float = 2.0,
    bias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> DcnCase:
    """Offsets are normal with std ``offset_scale`` pixels, so border points read partly outside the image;
    the mask is uniform in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    out_h = output_size(size[0], kernel[0], stride[0], padding[0], dilation[0])
    out_w = output_size(size[1], kernel[1], stride[1], padding[1], dilation[1])
    k = kernel[0] * kernel[1]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    return DcnCase(
        input=randn(batch, channels, *size),
        offset=randn(batch, 2 * deform_groups * k, out_h, out_w) * offset_scale,
        mask=torch.rand(batch, deform_groups * k, out_h, out_w, generator=g, dtype=dtype),
        weight=randn(out_channels, channels // groups, *kernel),
        bias=randn(out_channels) if bias else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        deform_groups=deform_groups,
    )


def forward_and_grads(
    fn: Callable[..., torch.Tensor], case: DcnCase, upstream_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor | None, ...]:
    """Output and the gradients of input, offset, mask, weight, bias (None without bias) for a fixed random
    upstream gradient (drawn in ``upstream_dtype`` when given, then cast, so that a float64 oracle sees the
    same rounded values as the low-precision backend)."""
    originals = (case.input, case.offset, case.mask, case.weight, case.bias)
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in originals]
    out = fn(*leaves, **case.kwargs())
    g = torch.Generator().manual_seed(123)
    upstream = torch.randn(out.shape, generator=g, dtype=upstream_dtype or out.dtype)
    out.backward(upstream.to(device=out.device, dtype=out.dtype))
    return (out.detach(), *(None if t is None else t.grad for t in leaves))
