"""ONNX lowering of ``deformbev::ms_deform_attn`` to standard operators (``GridSample``, opset >= 16).

:func:`register_onnx_lowering` teaches ``torch.onnx.export(..., dynamo=False)`` (the TorchScript
exporter) to write the custom op as the reference math of :func:`ops.reference.ms_deform_attn_reference`:
per level, the values become (N*M, D, H_l, W_l) images sampled by ``GridSample`` (bilinear, zero
padding, ``align_corners=0``) at ``2 * locations - 1``, then weighted and summed over levels and
points. Level sizes are read from the ``spatial_shapes`` tensor inside the graph and batch, query,
point and value sizes from the tensors' shapes, so the lowering does not bake them; only the number
of levels L is fixed when tracing.

Importing this module needs nothing beyond torch; exporting needs the ``onnx`` package.
"""

from __future__ import annotations

import torch

OP_NAME = "deformbev::ms_deform_attn"
MIN_OPSET = 16  # first opset with GridSample


def _const(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _dim(g, shape, index: int):
    """The 1-element int64 tensor ``shape[index]``."""
    return g.op("Slice", shape, _const(g, [index]), _const(g, [index + 1]))


_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16}


def _scalar(g, number: float, like):
    """A constant scalar of ``like``'s float type (``CastLike`` when the tracer does not know it)."""
    dtype = _DTYPES.get(like.type().scalarType())
    if dtype is None:
        return g.op("CastLike", g.op("Constant", value_t=torch.tensor(number)), like)
    return g.op("Constant", value_t=torch.tensor(number, dtype=dtype))


def _num_levels(spatial_shapes, sampling_locations) -> int:
    """L, static: from the traced shape of ``sampling_locations`` (N, Lq, M, L, P, 2) or of
    ``spatial_shapes`` (L, 2)."""
    for tensor, axis in ((sampling_locations, 3), (spatial_shapes, 0)):
        sizes = tensor.type().varyingSizes()
        if sizes is not None and len(sizes) > axis and sizes[axis] is not None:
            return int(sizes[axis])
    raise RuntimeError(
        f"ONNX lowering of {OP_NAME}: the number of levels is unknown while tracing "
        f"(sampling_locations {sampling_locations.type()}, spatial_shapes {spatial_shapes.type()})"
    )


def ms_deform_attn_symbolic(
    g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    """ONNX graph of the op: inputs as :func:`ops.ms_deform_attn`, output (N, Lq, M * D)."""
    del level_start_index  # levels are split by spatial_shapes, as in the reference backend
    n_levels = _num_levels(spatial_shapes, sampling_locations)
    value_shape = g.op("Shape", value)  # (N, S, M, D)
    loc_shape = g.op("Shape", sampling_locations)
    batch, heads, channels = _dim(g, value_shape, 0), _dim(g, value_shape, 2), _dim(g, value_shape, 3)
    queries, points = _dim(g, loc_shape, 1), _dim(g, loc_shape, 4)
    minus_one = _const(g, [-1])

    # (N, S, M, D) -> (N, M, D, S), split into levels of H_l * W_l positions
    value_t = g.op("Transpose", value, perm_i=[0, 2, 3, 1])
    heights = g.op("Gather", spatial_shapes, _const(g, [0]), axis_i=1)  # (L, 1)
    widths = g.op("Gather", spatial_shapes, _const(g, [1]), axis_i=1)
    sizes = g.op("Reshape", g.op("Mul", heights, widths), minus_one)  # (L,)
    levels = g.op("Split", value_t, sizes, axis_i=3, outputs=n_levels)
    if n_levels == 1:
        levels = [levels]
    two, one = _scalar(g, 2.0, sampling_locations), _scalar(g, 1.0, sampling_locations)
    grids = g.op("Sub", g.op("Mul", sampling_locations, two), one)
    if sampling_locations.type().scalarType() != value.type().scalarType():
        grids = g.op("CastLike", grids, value)
    mode = "linear" if g.opset >= 20 else "bilinear"
    grid_shape = g.op("Concat", minus_one, queries, points, _const(g, [2]), axis_i=0)
    sampled = []
    for level in range(n_levels):
        h = g.op("Reshape", g.op("Gather", heights, _const(g, [level]), axis_i=0), minus_one)
        w = g.op("Reshape", g.op("Gather", widths, _const(g, [level]), axis_i=0), minus_one)
        image = g.op("Reshape", levels[level], g.op("Concat", minus_one, channels, h, w, axis_i=0))
        grid = g.op("Gather", grids, _const(g, [level]), axis_i=3)  # (N, Lq, M, 1, P, 2)
        grid = g.op("Transpose", grid, perm_i=[0, 2, 1, 3, 4, 5])  # (N, M, Lq, 1, P, 2)
        grid = g.op("Reshape", grid, grid_shape)  # (N*M, Lq, P, 2)
        sampled.append(
            g.op("GridSample", image, grid, align_corners_i=0, mode_s=mode, padding_mode_s="zeros")
        )  # (N*M, D, Lq, P)
    stacked = g.op("Concat", *sampled, axis_i=3)  # (N*M, D, Lq, L*P)
    weights = g.op("Transpose", attention_weights, perm_i=[0, 2, 1, 3, 4])  # (N, M, Lq, L, P)
    weights = g.op(
        "Reshape",
        weights,
        g.op(
            "Concat", minus_one, _const(g, [1]), queries, g.op("Mul", points, _const(g, [n_levels])), axis_i=0
        ),
    )
    summed = g.op("ReduceSum", g.op("Mul", stacked, weights), _const(g, [3]), keepdims_i=0)  # (N*M, D, Lq)
    out = g.op("Reshape", summed, g.op("Concat", batch, g.op("Mul", heads, channels), queries, axis_i=0))
    return g.op("Transpose", out, perm_i=[0, 2, 1])  # (N, Lq, M*D)


def register_onnx_lowering(opset_version: int = MIN_OPSET) -> None:
    """Register the lowering with the TorchScript ONNX exporter for ``opset_version`` and later.

    Raises:
        ValueError: if ``opset_version`` is below 16 (no ``GridSample``).
    """
    if opset_version < MIN_OPSET:
        raise ValueError(f"opset_version must be >= {MIN_OPSET} (GridSample), got {opset_version}")
    torch.onnx.register_custom_op_symbolic(OP_NAME, ms_deform_attn_symbolic, opset_version)
