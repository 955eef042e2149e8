"""Deployable graphs of the detectors: ONNX (standard operators) and ``torch.export`` programs.

What is exported is the network up to its raw head outputs; post-processing (top-k, box decoding,
scaling to image size) stays outside the graph:

- Deformable DETR (:class:`Detr2dForExport`): ``images`` (B, 3, H, W), unpadded and normalized as for
  the eager model -> ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalized (cx, cy, w, h):
  what :class:`detr2d.PostProcess` takes.
- BEV detectors (:class:`BevFrameForExport`): one frame of a scene. BEVFormer-style: ``img`` (B, Ncam,
  3, H, W), ``lidar2img`` (B, Ncam, 4, 4), ``prev_bev`` (B, bev_h * bev_w, C), ``ego_motion`` (B, 4, 4),
  ``prev_exists`` (B,) bool -> ``cls_logits`` (B, Q, num_classes), ``box_code`` (B, Q, 10) of the last
  decoder layer (what ``model.box_decoder.decode`` takes) and ``bev`` (B, bev_h * bev_w, C), fed back
  as ``prev_bev`` with the next frame (zeros with ``prev_exists`` False at a scene's start). Encoders
  that read the CAN bus (the published temporal alignment, ``use_can_bus``) take a last input
  ``can_bus`` (B, 18) (:func:`bev.temporal_alignment.published_can_bus`); inputs a graph does not read
  are left out of it (``ego_motion`` with the published alignment). DETR3D-style (no BEV):
  ``img``, ``lidar2img`` -> ``cls_logits``, ``box_code``.

ONNX goes through the TorchScript exporter with the custom ops lowered to standard operators
(:mod:`ops.onnx`): the deformable attention to ``GridSample``, and the modulated deformable
convolution of the DCN backbones (the published ResNet-101-DCN of ``bevformer_small``,
``bevformer_base`` and ``detr3d``) to ``GridSample`` (every kernel point sampled into kh x kw tiles)
times the mask, then a ``Conv`` of stride (kh, kw) with the layer's weight (not ONNX's opset-19
``DeformConv``, which older ONNX Runtime releases do not implement). For the BEV models, a few aten
operators are lowered here where the built-in lowering is missing or wrong: ``linalg.inv`` (the
ego-motion inverse; Cramer's rule with ``Det``, in float32), ``sort`` with ``stable=True``
(``TopK``), ``index_add`` with repeated indices (``ScatterElements`` add), ``atan2`` and
``deg2rad`` (the published alignment).

Image sizes. Deformable DETR's graphs (ONNX and ``torch.export``) leave H and W free (the model takes
its level sizes from the feature maps' shapes, see :class:`Detr2dForExport`): one file serves every
input size. The BEV graphs are exported for the size of the example images; export once per deployed
input size.

BEV exports must trace the spatial cross-attention with every BEV query gathered for every camera
(the module gathers as many queries per camera as the most-seen camera sees, a number the tracer
bakes in); :func:`bev_example_inputs` builds example inputs whose cameras see every pillar, so the
exported graph is exact for any camera geometry.
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

from .deformable_detr import DeformableDETR

FORMATS = ("onnx", "export")
DEFAULT_OPSET = 17


class Detr2dForExport(nn.Module):
    """Deformable DETR as ``images (B, 3, H, W) -> (pred_logits (B, Q, K), pred_boxes (B, Q, 4))``.

    Its graphs leave H and W free (``dynamic_axes`` for ONNX, :meth:`dynamic_shapes` for
    ``torch.export``) from :attr:`min_image_size` up: every level keeps at least 2 cells per side
    (``torch.export`` specializes sizes of 1) and, for two-stage, the encoder keeps at least as many
    cells as proposals (the top-k needs them).
    """

    input_names = ("images",)
    output_names = ("pred_logits", "pred_boxes")
    dynamic_axes = {"images": {2: "height", 3: "width"}}

    def __init__(self, model: DeformableDETR) -> None:
        super().__init__()
        self.model = model
        strides = list(model.backbone.strides)
        while len(strides) < model.num_levels:  # extra levels: stride-2 convs
            strides.append(2 * strides[-1])
        size = strides[-1] + 1  # ceil(size / stride) == 2 on the coarsest level
        proposals = model.transformer.two_stage_num_proposals if model.two_stage else 0
        while sum(math.ceil(size / stride) ** 2 for stride in strides) < proposals:
            size += 1
        self.min_image_size = size

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim]]:
        """``torch.export`` ``dynamic_shapes`` of ``images``: H and W free from :attr:`min_image_size`."""
        size = self.min_image_size
        return ({2: torch.export.Dim("height", min=size), 3: torch.export.Dim("width", min=size)},)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs of the last decoder layer for an unpadded batch."""
        out = self.model(images)  # no mask: unpadded, known without reading data (traceable)
        return out["pred_logits"], out["pred_boxes"]


class BevFrameForExport(nn.Module):
    """One frame of a ``bev.MultiViewDetector3D``, with the previous BEV as explicit input and output.

    Inputs and outputs: see the module docstring (``input_names`` / ``output_names`` name them).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.has_bev = model.encoder is not None
        self.reads_can_bus = self.has_bev and model.encoder.reads_can_bus
        if self.has_bev:
            self.input_names = ("img", "lidar2img", "prev_bev", "ego_motion", "prev_exists")
            self.input_names += ("can_bus",) if self.reads_can_bus else ()
            self.output_names = ("cls_logits", "box_code", "bev")
        else:
            self.input_names = ("img", "lidar2img")
            self.output_names = ("cls_logits", "box_code")

    def forward(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Last-layer ``cls_logits`` (B, Q, K), ``box_code`` (B, Q, 10) and, with a BEV, the BEV."""
        outputs, bev = self.model.predict(img, lidar2img, prev_bev, ego_motion, prev_exists, can_bus)
        head = (outputs.cls_logits[-1], outputs.box_code[-1])
        return head + (bev,) if self.has_bev else head


def bev_example_inputs(
    model: nn.Module, image_size: tuple[int, int], batch: int = 1
) -> tuple[torch.Tensor, ...]:
    """Example inputs of :class:`BevFrameForExport` whose cameras see every BEV pillar.

    Every camera projects every point to the image centre at depth 1, so the traced spatial
    cross-attention gathers all BEV queries for every camera (see the module docstring).

    Args:
        model: the ``bev.MultiViewDetector3D``.
        image_size: (H, W) of the camera images.
        batch: B.

    Returns:
        ``(img, lidar2img)`` for DETR3D-style models, plus ``(prev_bev, ego_motion, prev_exists)``
        (random BEV, identity motion, all True) for BEVFormer-style ones, plus a random (B, 18)
        ``can_bus`` when the encoder reads one.
    """
    height, width = image_size
    device = next(model.parameters()).device
    img = torch.randn(batch, model.num_cams, 3, height, width, device=device)
    centre = torch.zeros(4, 4, device=device)
    centre[0, 3], centre[1, 3], centre[2, 3], centre[3, 3] = width / 2, height / 2, 1.0, 1.0
    lidar2img = centre.expand(batch, model.num_cams, 4, 4).clone()
    if model.encoder is None:
        return img, lidar2img
    encoder = model.encoder
    prev_bev = torch.randn(batch, encoder.bev_h * encoder.bev_w, encoder.embed_dims, device=device)
    ego_motion = torch.eye(4, device=device).expand(batch, 4, 4).clone()
    prev_exists = torch.ones(batch, dtype=torch.bool, device=device)
    frame = (img, lidar2img, prev_bev, ego_motion, prev_exists)
    return frame + (torch.randn(batch, 18, device=device),) if encoder.reads_can_bus else frame


def camera_ring(num_cams: int, image_size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """(B, Ncam, 4, 4) ``lidar2img`` of a synthetic rig: cameras at the lidar origin looking outwards at
    evenly spaced yaws (x forward, y left, z up), focal length W / 2, principal point at the image centre.
    Each camera sees a sector of the BEV, as on a real car: inputs for checks and benchmarks."""
    height, width = image_size
    intrinsics = torch.tensor([[width / 2, 0.0, width / 2], [0.0, width / 2, height / 2], [0.0, 0.0, 1.0]])
    lidar2img = torch.zeros(num_cams, 4, 4)
    for cam in range(num_cams):
        yaw = 2 * math.pi * cam / num_cams
        # camera axes in lidar coordinates: right, down, forward (viewing direction at this yaw)
        rotation = torch.tensor(
            [[math.sin(yaw), -math.cos(yaw), 0.0], [0.0, 0.0, -1.0], [math.cos(yaw), math.sin(yaw), 0.0]]
        )
        lidar2img[cam, :3, :3] = intrinsics @ rotation
        lidar2img[cam, 3, 3] = 1.0
    return lidar2img.expand(batch, num_cams, 4, 4).clone()


def prepare_export(
    model: nn.Module, image_size: tuple[int, int], batch: int = 1
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The export wrapper of a detector and example inputs for it.

    Args:
        model: a :class:`detr2d.DeformableDETR` or a ``bev.MultiViewDetector3D``.
        image_size: (H, W) of the input images (of every camera for BEV models).
        batch: B.

    Returns:
        (:class:`Detr2dForExport` or :class:`BevFrameForExport`, its example inputs: random images and,
        for BEV models, :func:`bev_example_inputs`).

    Raises:
        TypeError: for another kind of model.
    """
    if isinstance(model, DeformableDETR):
        device = next(model.parameters()).device
        return Detr2dForExport(model).eval(), (torch.randn(batch, 3, *image_size, device=device),)
    if hasattr(model, "encoder") and hasattr(model, "predict") and hasattr(model, "num_cams"):
        return BevFrameForExport(model).eval(), bev_example_inputs(model, image_size, batch)
    raise TypeError(f"cannot export a {type(model).__name__}: expected DeformableDETR or MultiViewDetector3D")


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
        ImportError: ``fmt="onnx"`` without the ``onnx`` package (``pip install .[export]``).
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
        raise ImportError("ONNX export needs the optional extra: pip install .[export] (onnx)") from exc
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
