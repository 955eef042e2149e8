"""The native DCNv2 kernels as one differentiable ``torch.library`` custom op, ``deformbev::deform_conv2d``.

It wraps ``torch.ops.deformbev_native.deform_conv2d_{forward,backward}`` (CPU and CUDA) with fake (meta)
implementations and an autograd formula, so that ``torch.compile(fullgraph=True)`` traces through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .native import _native_ops


@torch.library.custom_op("deformbev::deform_conv2d", mutates_args=())
def deform_conv2d_native(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    deform_groups: int,
) -> torch.Tensor:
    """Native forward: (N, C, H, W) -> (N, O, Ho, Wo) (arguments as :func:`ops.deform_conv2d`)."""
    return _native_ops().deform_conv2d_forward(
        input, offset, mask, weight, bias, *stride, *padding, *dilation, groups, deform_groups
    )


@deform_conv2d_native.register_fake
def _(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    return input.new_empty((input.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


@torch.library.custom_op("deformbev::deform_conv2d_backward", mutates_args=())
def deform_conv2d_native_backward(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    grad_output: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    deform_groups: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Native backward: gradients of input, offset, mask and weight."""
    return _native_ops().deform_conv2d_backward(
        input, offset, mask, weight, grad_output, *stride, *padding, *dilation, groups, deform_groups
    )


@deform_conv2d_native_backward.register_fake
def _(input, offset, mask, weight, grad_output, stride, padding, dilation, groups, deform_groups):
    return tuple(torch.empty_like(t) for t in (input, offset, mask, weight))


def _setup_context(ctx, inputs, output) -> None:
    input, offset, mask, weight, bias, *ctx.conv_args = inputs
    ctx.with_bias = bias is not None
    ctx.save_for_backward(input, offset, mask, weight)


def _backward(ctx, grad_output):
    grads = deform_conv2d_native_backward(*ctx.saved_tensors, grad_output, *ctx.conv_args)
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.with_bias else None
    return (*grads, grad_bias, None, None, None, None, None)


deform_conv2d_native.register_autograd(_backward, setup_context=_setup_context)
