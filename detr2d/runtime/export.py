"""Deployable graphs: ONNX (standard operators) and ``torch.export`` programs of any detector.

A detector says what its graph is: ``model.for_export(image_size, batch)`` returns an export wrapper (a
module with tensor inputs and outputs, ``input_names`` / ``output_names`` and, where sizes stay free,
``dynamic_axes`` for ONNX and ``dynamic_shapes()`` for ``torch.export``) and example inputs for it
(:class:`detr2d.export.Detr2dForExport`, :class:`bev.export.BevFrameForExport`). What is exported is the
network up to its raw head outputs; post-processing stays outside the graph.

ONNX goes through the TorchScript exporter with the project's custom ops lowered to standard operators
(:mod:`ops.onnx`): the deformable attention to ``GridSample``, and the modulated deformable
convolution of the DCN backbones to ``GridSample`` (every kernel point sampled into kh x kw tiles)
times the mask, then a ``Conv`` of stride (kh, kw) with the layer's weight (not ONNX's opset-19
``DeformConv``, which older ONNX Runtime releases do not implement). A few aten operators the BEV
models use are lowered here where the built-in lowering is missing or wrong: ``linalg.inv`` (Cramer's
rule with ``Det``, in float32), ``sort`` with ``stable=True`` (``TopK``), ``index_add`` with repeated
indices (``ScatterElements`` add), ``atan2`` and ``deg2rad``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torch.onnx import symbolic_helper

from ops.onnx import MIN_OPSET, register_onnx_lowering

FORMATS = ("onnx", "export")
DEFAULT_OPSET = 17


def prepare_export(
    model: nn.Module, image_size: tuple[int, int], batch: int = 1
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The export wrapper of a detector and example inputs for it: ``model.for_export(image_size, batch)``.

    Args:
        model: a detector that defines ``for_export`` (every detector of the project).
        image_size: (H, W) of the input images (of every camera for multi-camera models).
        batch: B of the example inputs.

    Raises:
        TypeError: ``model`` defines no ``for_export``.
    """
    for_export = getattr(model, "for_export", None)
    if for_export is None:
        raise TypeError(
            f"cannot export a {type(model).__name__}: it defines no for_export(image_size, batch)"
        )
    wrapper, example = for_export(image_size, batch)
    return wrapper.eval(), example


def onnx_max_errors(model: nn.Module, path: str | os.PathLike, inputs: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute difference between every output of ONNX Runtime (CPU) on the ONNX file ``path``
    and of ``model`` in PyTorch, on the same ``inputs`` (needs ``onnxruntime``)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fed = {node.name for node in session.get_inputs()}
    names = getattr(model, "input_names", [node.name for node in session.get_inputs()])
    feed = {name: x.detach().cpu().numpy() for name, x in zip(names, inputs, strict=True) if name in fed}
    with torch.no_grad():
        expected = model.eval()(*inputs)
    expected = (expected,) if isinstance(expected, torch.Tensor) else tuple(expected)
    got = session.run(None, feed)
    if len(got) != len(expected):
        raise ValueError(f"{path} has {len(got)} outputs, the model returns {len(expected)}")
    return [float((torch.from_numpy(g) - e.cpu()).abs().max()) for g, e in zip(got, expected, strict=True)]


def linalg_inv_symbolic(g, matrix):
    """ONNX ``torch.linalg.inv`` of (..., n, n) matrices with static n: cofactors / determinant (``Det``),
    computed in float32 (ONNX Runtime's ``Det`` kernel) and cast back."""
    sizes = matrix.type().sizes()
    if sizes is None or sizes[-1] is None or sizes[-1] != sizes[-2]:
        raise RuntimeError(f"ONNX lowering of linalg_inv needs square matrices of static size, got {sizes}")
    n = int(sizes[-1])
    a = g.op("Cast", matrix, to_i=1)  # float32
    cofactors = []
    for col in range(n):  # entry (row, col) of the inverse is the cofactor (col, row) / det
        for row in range(n):
            keep_rows = g.op("Constant", value_t=torch.tensor([r for r in range(n) if r != col]))
            keep_cols = g.op("Constant", value_t=torch.tensor([c for c in range(n) if c != row]))
            minor = g.op("Gather", g.op("Gather", a, keep_rows, axis_i=-2), keep_cols, axis_i=-1)
            det = g.op("Unsqueeze", g.op("Det", minor), g.op("Constant", value_t=torch.tensor([-1])))
            sign = g.op("Constant", value_t=torch.tensor(float((-1) ** (row + col))))
            cofactors.append(g.op("Mul", det, sign))
    leading = g.op(
        "Slice",
        g.op("Shape", a),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([-2])),
    )
    shape = g.op("Concat", leading, g.op("Constant", value_t=torch.tensor([n, n])), axis_i=0)
    adjugate = g.op("Reshape", g.op("Concat", *cofactors, axis_i=-1), shape)  # row-major over (col, row)
    adjugate = g.op("Transpose", adjugate, perm_i=[*range(len(sizes) - 2), len(sizes) - 1, len(sizes) - 2])
    determinant = g.op("Unsqueeze", g.op("Det", a), g.op("Constant", value_t=torch.tensor([-2, -1])))
    return g.op("CastLike", g.op("Div", adjugate, determinant), matrix)


def sort_symbolic(g, values, *args):
    """ONNX ``torch.sort`` (also the ``stable=True`` overload, which the built-in symbolic rejects) as
    ``TopK`` over the whole axis: ties keep their index order, so the sort is stable. Integer types
    below 32 bits are sorted as int32 (ONNX Runtime's ``TopK`` types)."""
    if len(args) not in (2, 3):
        raise RuntimeError(f"ONNX lowering of sort: unexpected arguments {args}")
    dim, descending = args[-2:]  # (dim, descending) or (stable, dim, descending)
    dim = int(symbolic_helper._get_const(dim, "i", "dim"))
    descending = bool(symbolic_helper._get_const(descending, "i", "descending"))
    if values.type().scalarType() in ("Byte", "Char", "Short", "Bool"):
        values = g.op("Cast", values, to_i=6)  # int32
    length = g.op("Gather", g.op("Shape", values), g.op("Constant", value_t=torch.tensor([dim])))
    return g.op("TopK", values, length, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2)


def index_add_symbolic(g, target, dim, index, source, alpha=None):
    """ONNX ``Tensor.index_add`` as ``ScatterElements(reduction="add")``: repeated indices accumulate
    (the built-in lowering keeps only one of them)."""
    dim = int(symbolic_helper._get_const(dim, "i", "dim"))
    rank = len(source.type().varyingSizes())
    dim = dim % rank
    if alpha is not None and not symbolic_helper._is_none(alpha):
        factor = float(symbolic_helper._get_const(alpha, "f", "alpha"))
        if factor != 1.0:
            source = g.op(
                "Mul", source, g.op("CastLike", g.op("Constant", value_t=torch.tensor(factor)), source)
            )
    axes = [axis for axis in range(rank) if axis != dim]
    index = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor(axes))) if axes else index
    index = g.op("Expand", index, g.op("Shape", source))
    return g.op("ScatterElements", target, index, source, axis_i=dim, reduction_s="add")


def deg2rad_symbolic(g, degrees):
    """ONNX ``torch.deg2rad`` (the published BEV alignment's yaw change): a product with pi / 180."""
    factor = g.op(
        "CastLike", g.op("Constant", value_t=torch.tensor(math.pi / 180.0, dtype=torch.float64)), degrees
    )
    return g.op("Mul", degrees, factor)


def atan2_symbolic(g, y, x):
    """ONNX ``torch.atan2`` computed in float32 (ONNX Runtime has no float64 ``Atan``; the published BEV
    alignment's heading is float64) and cast back: ``atan(y / x)`` moved by +-pi when x < 0 (+pi for
    y >= 0), 0 at the origin."""
    y32, x32 = g.op("Cast", y, to_i=1), g.op("Cast", x, to_i=1)
    zero = g.op("Constant", value_t=torch.tensor(0.0))
    pi = g.op("Constant", value_t=torch.tensor(math.pi))
    angle = g.op("Atan", g.op("Div", y32, x32))
    shifted = g.op("Where", g.op("GreaterOrEqual", y32, zero), g.op("Add", angle, pi), g.op("Sub", angle, pi))
    angle = g.op("Where", g.op("Less", x32, zero), shifted, angle)
    origin = g.op("And", g.op("Equal", x32, zero), g.op("Equal", y32, zero))
    return g.op("CastLike", g.op("Where", origin, zero, angle), y)


def _register_symbolics(opset: int) -> None:
    register_onnx_lowering(opset)
    torch.onnx.register_custom_op_symbolic("aten::linalg_inv", linalg_inv_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("aten::sort", sort_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("aten::index_add", index_add_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("aten::deg2rad", deg2rad_symbolic, opset)
    torch.onnx.register_custom_op_symbolic("aten::atan2", atan2_symbolic, opset)


def export_model(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    fmt: str,
    out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> Any:
    """Export ``model`` (a :class:`Detr2dForExport` or :class:`BevFrameForExport`, or any module with
    tensor inputs and outputs) traced on ``example_inputs`` to ``out``.

    Args:
        model: the module; it is put in eval mode.
        example_inputs: its positional inputs.
        fmt: ``"onnx"`` (standard operators, checked with ``onnx.checker``) or ``"export"``
            (``torch.export`` program saved with ``torch.export.save``; keeps ``deformbev::ms_deform_attn``
            as one node).
        out: file to write.
        opset: ONNX opset (>= 16).
        dynamic_axes: ONNX only: input/output name -> {axis: name} of sizes left free in the graph
            (e.g. the query axis of a single op); None: the model's own ``dynamic_axes`` when it has
            them (:class:`Detr2dForExport`: H and W), else every size is the traced one. ``torch.export``
            leaves free what the model's ``dynamic_shapes()`` returns (:class:`Detr2dForExport`: H and W).

    Returns:
        The loaded ``onnx.ModelProto`` for ``"onnx"``, the ``torch.export.ExportedProgram`` for ``"export"``.

    Raises:
        ValueError: unknown ``fmt``, an opset below 16, or example images smaller than the model's
            ``min_image_size``.
        RuntimeError: ``fmt="export"`` of a model whose code branches on tensor values.
        ImportError: ``fmt="onnx"`` without the ``onnx`` package (``pip install onnx onnxruntime``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (GridSample), got {opset}")
    model.eval()
    inputs = tuple(example_inputs)
    min_size = getattr(model, "min_image_size", None)
    if min_size is not None and min(inputs[0].shape[-2:]) < min_size:
        raise ValueError(
            f"example images of {type(model).__name__} must be at least {min_size} x {min_size} (its graphs "
            f"accept H, W >= {min_size}), got {tuple(inputs[0].shape[-2:])}"
        )
    if fmt == "export":
        dynamic_shapes = model.dynamic_shapes() if hasattr(model, "dynamic_shapes") else None
        try:
            with torch.no_grad():
                program = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
        except GuardOnDataDependentSymNode as exc:
            raise RuntimeError(
                f"torch.export cannot trace {type(model).__name__}: its code branches on tensor values "
                f"({str(exc).splitlines()[0]}); export it with fmt='onnx'"
            ) from exc
        torch.export.save(program, out)
        return program
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(
            "ONNX export needs the optional package onnx: pip install onnx onnxruntime"
        ) from exc
    _register_symbolics(opset)
    # The tracer warns about every Python number it bakes in; the module docstring says which matter.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter: chosen, see above
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        torch.onnx.export(
            model,
            inputs,
            str(out),
            dynamo=False,
            opset_version=opset,
            input_names=list(getattr(model, "input_names", ())) or None,
            output_names=list(getattr(model, "output_names", ())) or None,
            dynamic_axes=getattr(model, "dynamic_axes", None) if dynamic_axes is None else dynamic_axes,
        )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    return proto
