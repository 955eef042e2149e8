"""ONNX lowerings of the custom ops to standard operators (``GridSample``, opset >= 16).

:func:`register_onnx_lowering` teaches ``torch.onnx.export(..., dynamo=False)`` (the TorchScript
exporter) to write both custom ops as their reference math:

- ``deformbev::ms_deform_attn`` (:func:`ops.reference.ms_deform_attn_reference`): per level, the values
  become (N*M, D, H_l, W_l) images sampled by ``GridSample`` (bilinear, zero padding,
  ``align_corners=0``) at ``2 * locations - 1``, then weighted and summed over levels and points. Level
  sizes are read from the ``spatial_shapes`` tensor inside the graph and batch, query, point and value
  sizes from the tensors' shapes, so the lowering does not bake them; only the number of levels L is
  fixed when tracing.
- ``deformbev::deform_conv2d`` (the modulated deformable convolution,
  :func:`ops.deform_conv_reference.deform_conv2d_reference`): ``GridSample`` (bilinear, zero padding,
  ``align_corners=0`` at ``(2 * pixel + 1) / size - 1``, so a pixel coordinate p reads corners
  ``floor(p)`` and ``floor(p) + 1``, zero outside the image, as the reference) writes every kernel
  point's sample into an (N, C, Ho * kh, Wo * kw) image whose kh x kw tiles are the im2col patches of
  the output pixels; scaled by the mask, a ``Conv`` with kernel = stride = (kh, kw), the op's groups
  and bias gives the output. Sizes are read from the tensors' shapes; the kernel size (the weight's),
  stride, padding, dilation, groups and deform groups are fixed when tracing. ONNX's own ``DeformConv``
  is not used: it needs opset 19 and older ONNX Runtime releases do not implement it, while this
  lowering runs on any runtime with opset 16.

Importing this module needs nothing beyond torch; exporting needs the ``onnx`` package.
"""

from __future__ import annotations

import torch
from torch.onnx import symbolic_helper

OP_NAME = "deformbev::ms_deform_attn"
DEFORM_CONV_OP_NAME = "deformbev::deform_conv2d"
MIN_OPSET = 16  # first opset with GridSample


def _const(g, values: list[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _dim(g, shape, index: int):
    """The 1-element int64 tensor ``shape[index]``."""
    return g.op("Slice", shape, _const(g, [index]), _const(g, [index + 1]))


_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16}


def _floats(g, values: torch.Tensor, like):
    """A constant of ``like``'s float type (``CastLike`` when the tracer does not know it)."""
    dtype = _DTYPES.get(like.type().scalarType())
    if dtype is None:
        return g.op("CastLike", g.op("Constant", value_t=values), like)
    return g.op("Constant", value_t=values.to(dtype))


def _scalar(g, number: float, like):
    """A constant scalar of ``like``'s float type."""
    return _floats(g, torch.tensor(number), like)


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
    num_levels = _num_levels(spatial_shapes, sampling_locations)
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
    levels = g.op("Split", value_t, sizes, axis_i=3, outputs=num_levels)
    if num_levels == 1:
        levels = [levels]
    two, one = _scalar(g, 2.0, sampling_locations), _scalar(g, 1.0, sampling_locations)
    grids = g.op("Sub", g.op("Mul", sampling_locations, two), one)
    if sampling_locations.type().scalarType() != value.type().scalarType():
        grids = g.op("CastLike", grids, value)
    mode = "linear" if g.opset >= 20 else "bilinear"
    grid_shape = g.op("Concat", minus_one, queries, points, _const(g, [2]), axis_i=0)
    sampled = []
    for level in range(num_levels):
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
            "Concat",
            minus_one,
            _const(g, [1]),
            queries,
            g.op("Mul", points, _const(g, [num_levels])),
            axis_i=0,
        ),
    )
    summed = g.op("ReduceSum", g.op("Mul", stacked, weights), _const(g, [3]), keepdims_i=0)  # (N*M, D, Lq)
    out = g.op("Reshape", summed, g.op("Concat", batch, g.op("Mul", heads, channels), queries, axis_i=0))
    return g.op("Transpose", out, perm_i=[0, 2, 1])  # (N, Lq, M*D)


def _window_starts(g, shape, index: int, stride: int, padding: int, like):
    """``arange(shape[index]) * stride - padding`` in ``like``'s float type: the first pixel of each
    output position's window along one axis."""
    count = g.op("Gather", shape, g.op("Constant", value_t=torch.tensor(index)), axis_i=0)  # scalar
    zero, one = g.op("Constant", value_t=torch.tensor(0)), g.op("Constant", value_t=torch.tensor(1))
    positions = g.op("CastLike", g.op("Range", zero, count, one), like)
    return g.op("Sub", g.op("Mul", positions, _scalar(g, stride, like)), _scalar(g, padding, like))


def _normalized(g, pixels, size, like):
    """``GridSample`` coordinates (``align_corners=0``) of pixel coordinates along an axis of ``size``
    (a 1-element int64 tensor): ``(2 * pixels + 1) / size - 1``."""
    doubled = g.op("Add", g.op("Mul", pixels, _scalar(g, 2.0, like)), _scalar(g, 1.0, like))
    return g.op("Sub", g.op("Div", doubled, g.op("CastLike", size, like)), _scalar(g, 1.0, like))


def _deform_conv_grid(g, input, offset, kernel, stride, padding, dilation, deform_groups: int):
    """``GridSample`` grid (N * G, Ho * kh, Wo * kw, 2) of the op: (x, y) of kernel point (ki, kj) of
    output pixel (i, j) at (i * kh + ki, j * kw + kj), pixel ``(i * sh - ph + ki * dh + dy,
    j * sw - pw + kj * dw + dx)`` as in the reference."""
    kernel_h, kernel_w = kernel
    in_shape, out_shape = g.op("Shape", input), g.op("Shape", offset)  # (N, C, H, W), (N, 2GK, Ho, Wo)
    out_h, out_w = _dim(g, out_shape, 2), _dim(g, out_shape, 3)
    deltas_shape = g.op(
        "Concat", _const(g, [-1, deform_groups, kernel_h, kernel_w, 2]), out_h, out_w, axis_i=0
    )
    deltas = g.op("Reshape", offset, deltas_shape)  # (N, G, kh, kw, 2, Ho, Wo), (dy, dx) on axis 4
    coordinates = []
    for axis in (1, 0):  # x (dx, widths) then y (dy, heights): GridSample's (x, y)
        starts_shape, taps_shape = [1, 1, 1, 1], [1, 1, 1, 1]  # over (kh, kw, Ho, Wo)
        starts_shape[2 + axis], taps_shape[axis] = -1, -1
        starts = _window_starts(g, out_shape, 2 + axis, stride[axis], padding[axis], input)
        taps = torch.arange(kernel[axis]) * dilation[axis]
        base = g.op(
            "Add", g.op("Reshape", starts, _const(g, starts_shape)), _floats(g, taps.view(taps_shape), input)
        )
        delta = g.op("Gather", deltas, g.op("Constant", value_t=torch.tensor(axis)), axis_i=4)
        pixels = g.op("Add", delta, base)  # (N, G, kh, kw, Ho, Wo)
        normalized = _normalized(g, pixels, _dim(g, in_shape, 2 + axis), input)
        coordinates.append(g.op("Unsqueeze", normalized, _const(g, [-1])))
    grid = g.op("Concat", *coordinates, axis_i=-1)  # (N, G, kh, kw, Ho, Wo, 2) as (x, y)
    grid = g.op("Transpose", grid, perm_i=[0, 1, 4, 2, 5, 3, 6])  # (N, G, Ho, kh, Wo, kw, 2)
    tiled_h, tiled_w = g.op("Mul", out_h, _const(g, [kernel_h])), g.op("Mul", out_w, _const(g, [kernel_w]))
    return g.op("Reshape", grid, g.op("Concat", _const(g, [-1]), tiled_h, tiled_w, _const(g, [2]), axis_i=0))


def deform_conv2d_symbolic(
    g, input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups
):
    """ONNX graph of the op: inputs as :func:`ops.deform_conv2d`, output (N, O, Ho, Wo)."""
    sizes = weight.type().varyingSizes()
    if sizes is None or len(sizes) != 4 or any(size is None for size in sizes):
        raise RuntimeError(
            f"ONNX lowering of {DEFORM_CONV_OP_NAME}: the weight's shape (O, C / groups, kh, kw) is unknown "
            f"while tracing ({weight.type()})"
        )
    _, group_channels, kernel_h, kernel_w = (int(size) for size in sizes)
    stride, padding, dilation = (
        symbolic_helper._get_const(value, "is", name)
        for value, name in ((stride, "stride"), (padding, "padding"), (dilation, "dilation"))
    )
    groups = symbolic_helper._get_const(groups, "i", "groups")
    deform_groups = symbolic_helper._get_const(deform_groups, "i", "deform_groups")
    channels = group_channels * groups
    grid = _deform_conv_grid(g, input, offset, (kernel_h, kernel_w), stride, padding, dilation, deform_groups)
    in_shape, grid_shape = g.op("Shape", input), g.op("Shape", grid)
    height_width, tiled = (
        g.op("Slice", in_shape, _const(g, [2]), _const(g, [4])),
        g.op("Slice", grid_shape, _const(g, [1]), _const(g, [3])),
    )
    images = g.op(
        "Reshape", input, g.op("Concat", _const(g, [-1, channels // deform_groups]), height_width, axis_i=0)
    )
    mode = "linear" if g.opset >= 20 else "bilinear"
    tiles = g.op("GridSample", images, grid, align_corners_i=0, mode_s=mode, padding_mode_s="zeros")
    # tiles (N * G, C / G, Ho * kh, Wo * kw), scaled by the mask laid out the same way
    out_h_w = g.op("Slice", g.op("Shape", offset), _const(g, [2]), _const(g, [4]))
    scale = g.op("Reshape", mask, g.op("Concat", _const(g, [-1, kernel_h, kernel_w]), out_h_w, axis_i=0))
    scale = g.op("Transpose", scale, perm_i=[0, 3, 1, 4, 2])  # (N * G, Ho, kh, Wo, kw)
    scale = g.op("Reshape", scale, g.op("Concat", _const(g, [-1, 1]), tiled, axis_i=0))
    columns = g.op(
        "Reshape", g.op("Mul", tiles, scale), g.op("Concat", _const(g, [-1, channels]), tiled, axis_i=0)
    )
    conv_inputs = (columns, weight) if symbolic_helper._is_none(bias) else (columns, weight, bias)
    # each kh x kw tile of the (N, C, Ho * kh, Wo * kw) columns is one output pixel's patch
    return g.op(
        "Conv",
        *conv_inputs,
        kernel_shape_i=[kernel_h, kernel_w],
        strides_i=[kernel_h, kernel_w],
        group_i=groups,
    )


def register_onnx_lowering(opset_version: int = MIN_OPSET) -> None:
    """Register the lowerings with the TorchScript ONNX exporter for ``opset_version`` and later.

    Raises:
        ValueError: if ``opset_version`` is below 16 (no ``GridSample``).
    """
    if opset_version < MIN_OPSET:
        raise ValueError(f"opset_version must be >= {MIN_OPSET} (GridSample), got {opset_version}")
    lowerings = ((OP_NAME, ms_deform_attn_symbolic), (DEFORM_CONV_OP_NAME, deform_conv2d_symbolic))
    for name, symbolic in lowerings:
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset_version)
