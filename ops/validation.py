"""Argument checks of the op: every problem becomes a ``ValueError`` naming the argument and the shape."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(value_dtype: torch.dtype) -> torch.dtype:
    """The dtype the op computes in for ``value_dtype``: float32 for float16/bfloat16/float32 (the
    values are stored low, sampling positions, weights and sums stay float32), float64 for float64."""
    return torch.promote_types(value_dtype, torch.float32)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_inputs(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int,
) -> None:
    """Validate the op's inputs against the conventions of ``ms_deform_attn``; raise ``ValueError``.

    ``im2col_step`` must be a positive int and is otherwise ignored (the kernels take the whole batch).
    ``sampling_locations`` and ``attention_weights`` may have any floating dtype that converts exactly to
    the compute dtype of ``value`` (e.g. float32 locations with bfloat16 values, as under autocast).
    """
    named = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(im2col_step, bool) or not isinstance(im2col_step, int) or im2col_step < 1:
        raise ValueError(f"im2col_step must be a positive int, got {im2col_step!r}")
    if value.dim() != 4:
        raise ValueError(f"value must have shape (N, S, M, D), got {_shape(value)}")
    n, s, m, d = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape (L, 2), got {_shape(spatial_shapes)}")
    num_levels = spatial_shapes.shape[0]
    if level_start_index.shape != (num_levels,):
        raise ValueError(
            f"level_start_index must have shape ({num_levels},), got {_shape(level_start_index)}"
        )
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must have shape (N, Lq, M, L, P, 2), got {_shape(sampling_locations)}"
        )
    lq, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (n, lq, m, num_levels, num_points, 2)
    if _shape(sampling_locations) != expected:
        raise ValueError(f"sampling_locations must have shape {expected}, got {_shape(sampling_locations)}")
    if _shape(attention_weights) != expected[:-1]:
        raise ValueError(
            f"attention_weights must have shape {expected[:-1]}, got {_shape(attention_weights)}"
        )
    if min(n, s, m, d, num_levels, num_points) == 0 and lq != 0:
        raise ValueError(
            f"empty dimension: value {_shape(value)}, spatial_shapes {_shape(spatial_shapes)}, "
            f"sampling_locations {_shape(sampling_locations)}"
        )
    for name in ("value", "sampling_locations", "attention_weights"):
        if named[name].dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be a floating tensor, got {named[name].dtype}")
    compute = compute_dtype(value.dtype)
    for name in ("sampling_locations", "attention_weights"):
        dtype = named[name].dtype
        if torch.promote_types(dtype, compute) != compute:
            raise ValueError(
                f"{name} has dtype {dtype} but value has {value.dtype}, which computes in {compute}: "
                f"pass {name} in {compute} or value in {dtype}"
            )
    for name in ("spatial_shapes", "level_start_index"):
        if named[name].dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {named[name].dtype}")
    for name, t in named.items():
        if t.device != value.device:
            raise ValueError(f"{name} is on {t.device} but value is on {value.device}")
    _check_levels(spatial_shapes, level_start_index, s)


def _check_levels(spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, s: int) -> None:
    if torch.compiler.is_compiling() or spatial_shapes.is_meta or level_start_index.is_meta:
        return  # no data to read while tracing; eager calls check it
    shapes = spatial_shapes.tolist()
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes rows (H, W) must be positive, got {shapes}")
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    if level_start_index.tolist() != starts:
        raise ValueError(
            f"level_start_index must be the exclusive cumsum of H*W = {starts}, "
            f"got {level_start_index.tolist()}"
        )
    if total != s:
        raise ValueError(f"value has S = {s} positions but spatial_shapes sum to {total}")
