"""The native backends as one differentiable ``torch.library`` custom op.

``deformbev::ms_deform_attn`` wraps the compiled kernels (``torch.ops.deformbev_native.*``) with a fake
(meta) implementation and an autograd formula, so that ``torch.compile(fullgraph=True)`` traces
through it without graph breaks. The compiled library is loaded lazily on the first real call.

Dtypes: the output has ``value``'s dtype and each gradient its input's dtype; ``sampling_locations``
and ``attention_weights`` may be wider than ``value`` (float32 with float16/bfloat16 values).

Autocast: no autocast kernel is registered, so under ``torch.autocast`` the op runs on the dtypes it is
given (autocast falls through). That is deliberate: an autocast cast (``torch.library.register_autocast``)
would convert every floating input to the low dtype, and bfloat16 sampling locations lie 0.5 px apart
on a 134-wide map. Under autocast ``value`` comes out of a linear projection in the low
dtype, so the op stores and reads the low dtype while positions and sums stay float32.
"""

from __future__ import annotations

import torch

from .extension import load_native


def _native_ops():
    status = load_native()
    if not status.cpu:
        raise RuntimeError(f"the native deformable-attention op is unavailable: {status.error}")
    return torch.ops.deformbev_native


@torch.library.custom_op("deformbev::ms_deform_attn", mutates_args=())
def ms_deform_attn_native(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Native forward: (N, S, M, D) values sampled at (N, Lq, M, L, P, 2) → (N, Lq, M * D)."""
    return _native_ops().ms_deform_attn_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@ms_deform_attn_native.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))  # value's dtype, contiguous


@torch.library.custom_op("deformbev::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_native_backward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    grad_output: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Native backward: gradients of value, sampling_locations and attention_weights."""
    return _native_ops().ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
    )


@ms_deform_attn_native_backward.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output):
    # each gradient contiguous, in its input's dtype
    return tuple(t.new_empty(t.shape) for t in (value, sampling_locations, attention_weights))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_attn = ms_deform_attn_native_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
    )
    return grad_value, None, None, grad_loc, grad_attn


ms_deform_attn_native.register_autograd(_backward, setup_context=_setup_context)
