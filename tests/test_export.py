"""Export: ONNX (op lowered to GridSample) parity with PyTorch under ONNX Runtime, and torch.export."""

from __future__ import annotations

import math

import pytest
import torch
from detr2d_helpers import NARROW

from bev import build_bev_model
from bev.export import BevFrameForExport, camera_ring
from detr2d import VARIANTS, build_model
from detr2d.builder import DEFORMABLE_VARIANTS
from detr2d.export import Detr2dForExport
from detr2d.runtime.export import export_model, onnx_max_errors, prepare_export
from ops import ModulatedDeformConv2d, MSDeformAttn, ms_deform_attn

EXTRA = "needs the optional packages: pip install onnx onnxruntime"
onnx = pytest.importorskip("onnx", reason=f"ONNX export {EXTRA} (onnx)")
pytest.importorskip("onnxruntime", reason=f"ONNX Runtime parity {EXTRA} (onnxruntime)")

TOL = 1e-4
NO_DCN = (False, False, False, False)


def random_offsets(model: torch.nn.Module) -> torch.nn.Module:
    """Offsets that depend on the query (the init's are constant), so that sampling moves around, and
    deformable convolutions with offsets of a few pixels and a mask (the init's are zero and 0.5)."""
    for module in model.modules():
        if hasattr(module, "sampling_offsets"):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
        if isinstance(module, ModulatedDeformConv2d):
            torch.nn.init.normal_(module.conv_offset.weight, std=0.01)
            torch.nn.init.normal_(module.conv_offset.bias)
    return model.eval()


def small_detr2d(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **NARROW)
    return random_offsets(model)


PUBLISHED = dict(  # bevformer_tiny's temporal alignment and quirks, on the demo's small model
    temporal_alignment="published",
    use_can_bus=True,
    shift_current_refs=True,
    first_layer_current=True,
    level_embeds_rows=4,
    rotate_center=(3.0, 3.0),
)


#: the published models' backbone (ResNet-101-DCN) at a smaller depth: DCN in layer3-4, caffe style
R50_DCN = dict(backbone="resnet50", backbone_style="caffe", backbone_dcn=(False, False, True, True))


def small_bev(head: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(backbone="resnet18", backbone_dcn=NO_DCN, embed_dims=32, num_heads=2, ffn_dims=32)
    common.update(overrides)
    if head == "bev":
        model = build_bev_model(
            "bev_demo",
            **common,
            bev_h=6,
            bev_w=6,
            encoder_layers=1,
            decoder_layers=2,
            num_queries=10,
        )
    else:
        model = build_bev_model(
            "detr3d",
            **common,
            return_layers=("layer3", "layer4"),
            num_levels=2,
            decoder_layers=2,
            num_queries=10,
        )
    return random_offsets(model)


class Op(torch.nn.Module):
    input_names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, value, shapes, starts, locations, weights):
        return ms_deform_attn(value, shapes, starts, locations, weights, backend=self.backend)


def test_op_lowering_equals_reference(tmp_path, cpu_backend):
    """The custom op becomes GridSample nodes; ONNX Runtime equals the reference on new inputs: another
    number of queries, locations outside [0, 1], other level sizes (read from the graph input)."""

    def inputs(queries: int, shapes: list[list[int]]) -> tuple[torch.Tensor, ...]:
        locations = torch.rand(2, queries, 4, 2, 3, 2) * 1.4 - 0.2
        weights = torch.rand(2, queries, 4, 2, 3).softmax(-1)
        starts = torch.tensor([0, shapes[0][0] * shapes[0][1]])
        return torch.randn(2, 39, 4, 8), torch.tensor(shapes), starts, locations, weights

    torch.manual_seed(0)
    path = tmp_path / "op.onnx"
    free = {"sampling_locations": {1: "queries"}, "attention_weights": {1: "queries"}}
    proto = export_model(Op(cpu_backend), inputs(7, [[6, 5], [3, 3]]), "onnx", path, dynamic_axes=free)
    assert "GridSample" in {node.op_type for node in proto.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    for queries, shapes in ((7, [[6, 5], [3, 3]]), (11, [[5, 6], [9, 1]])):
        errors = onnx_max_errors(Op("reference"), path, inputs(queries, shapes))
        assert max(errors) < 1e-5, (queries, shapes, errors)


#: NARROW's ResNet-18 makes these the R50 models again: run with the slow tests only
SAME_UNDER_NARROW = ("detr_r101", "detr_r101_dc5")


@pytest.mark.parametrize(
    "name",
    [pytest.param(v, marks=pytest.mark.slow if v in SAME_UNDER_NARROW else ()) for v in sorted(VARIANTS)],
)
def test_detr2d_onnx_equals_pytorch(tmp_path, name):
    """One file, exported at one size and batch 1, equals PyTorch at another size and at batch 2 too
    (free B, H and W), for every Deformable DETR and DETR variant (DETR's nn.MultiheadAttention exports
    to standard ONNX)."""
    model = small_detr2d(name)
    wrapper, example = prepare_export(model, (80, 112))
    path = tmp_path / f"{name}.onnx"
    proto = export_model(wrapper, example, "onnx", path)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    for batch, height, width in ((1, 80, 112), (1, 112, 72), (2, 80, 112)):
        errors = onnx_max_errors(wrapper, path, (torch.randn(batch, 3, height, width),))
        assert max(errors) < TOL, (name, batch, height, width, errors)


@pytest.mark.parametrize(
    ("alignment", "image_size"), [("planar", (64, 96)), ("published", (96, 128))], ids=["planar", "published"]
)
def test_bevformer_onnx_runs_a_scene(tmp_path, alignment, image_size):
    """Exported on the all-seeing example cameras, the graph equals PyTorch on a camera ring over two
    frames, the second reading the first one's BEV back (moved by a turning ego motion / CAN bus)."""
    model = small_bev("bev", **(PUBLISHED if alignment == "published" else {}))
    wrapper, example = prepare_export(model, image_size)
    assert wrapper.reads_can_bus == (alignment == "published")
    path = tmp_path / "bev.onnx"
    proto = export_model(wrapper, example, "onnx", path)
    unused = ("ego_motion",) if alignment == "published" else ()  # it reads the CAN bus instead
    assert [i.name for i in proto.graph.input] == [n for n in wrapper.input_names if n not in unused]
    lidar2img = camera_ring(model.num_cams, image_size)
    motion = torch.eye(4)[None].clone()
    motion[0, :2, :2] = torch.tensor([[math.cos(0.2), -math.sin(0.2)], [math.sin(0.2), math.cos(0.2)]])
    motion[0, :2, 3] = torch.tensor([3.0, -1.0])
    can_bus = torch.zeros(1, 18)
    can_bus[0, :3] = torch.tensor([3.0, -1.0, 0.0])
    can_bus[0, 16:] = torch.tensor([0.5, math.degrees(0.2)])
    extra = (can_bus,) if wrapper.reads_can_bus else ()
    bev_cells = model.encoder.bev_h * model.encoder.bev_w
    first = (
        torch.randn(1, model.num_cams, 3, *image_size),
        lidar2img,
        torch.zeros(1, bev_cells, model.encoder.embed_dims),
        torch.eye(4)[None],
        torch.zeros(1, dtype=torch.bool),
        *extra,
    )
    assert max(onnx_max_errors(wrapper, path, first)) < TOL
    with torch.no_grad():
        bev = wrapper(*first)[2]
    second = (
        torch.randn(1, model.num_cams, 3, *image_size),
        lidar2img,
        bev,
        motion,
        torch.ones(1, dtype=torch.bool),
        *extra,
    )
    errors = onnx_max_errors(wrapper, path, second)
    assert max(errors) < TOL, errors


def test_detr3d_onnx_equals_pytorch(tmp_path):
    model = small_bev("detr3d")
    wrapper, example = prepare_export(model, (64, 96))
    assert isinstance(wrapper, BevFrameForExport) and wrapper.output_names == ("cls_logits", "box_code")
    path = tmp_path / "detr3d.onnx"
    export_model(wrapper, example, "onnx", path)
    inputs = (torch.randn(1, model.num_cams, 3, 64, 96), camera_ring(model.num_cams, (64, 96)))
    assert max(onnx_max_errors(wrapper, path, inputs)) < TOL


def test_detr3d_dcn_backbone_onnx_equals_pytorch(tmp_path, cpu_backend):
    """The published models' modulated deformable convolutions (the native op) lower to GridSample +
    Conv: with offsets of a few pixels on 6 x 8 and 3 x 4 maps, the graph equals PyTorch."""
    model = small_bev("detr3d", **R50_DCN)
    deformable = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(deformable) == 9  # layer3: 6 blocks, layer4: 3
    wrapper, example = prepare_export(model, (96, 128))
    path = tmp_path / "detr3d_dcn.onnx"
    proto = export_model(wrapper, example, "onnx", path)  # onnx.checker inside
    assert sum(node.op_type == "GridSample" for node in proto.graph.node) >= len(deformable)
    inputs = (torch.randn(1, model.num_cams, 3, 96, 128), camera_ring(model.num_cams, (96, 128)))
    errors = onnx_max_errors(wrapper, path, inputs)
    assert max(errors) < TOL, errors


class Helpers(torch.nn.Module):
    """The other lowerings the BEV graphs need: inverse, atan2, sort (stable), index_add with repeats."""

    input_names = ("matrices", "y", "x", "keys", "index", "source")

    def forward(self, matrices, y, x, keys, index, source):
        order = torch.sort(keys, dim=-1, descending=True, stable=True).indices
        summed = torch.zeros(5, 3).index_add(0, index, source)
        return torch.linalg.inv(matrices), torch.atan2(y, x), order, summed


def test_helper_lowerings(tmp_path):
    torch.manual_seed(0)
    matrices = (2 * torch.eye(4) + 0.3 * torch.randn(3, 4, 4)).double()  # well conditioned (float32 Det)
    y = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    x = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    keys = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=torch.uint8)
    index = torch.tensor([0, 2, 2, 4, 0, 2])
    inputs = (matrices, y, x, keys, index, torch.randn(6, 3))
    export_model(Helpers(), inputs, "onnx", tmp_path / "helpers.onnx")
    assert max(onnx_max_errors(Helpers(), tmp_path / "helpers.onnx", inputs)) < 1e-5


def test_export_argument_errors(tmp_path):
    module = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="fmt must be one of"):
        export_model(module, (torch.randn(1, 2),), "tflite", tmp_path / "x")
    with pytest.raises(ValueError, match="opset must be >= 16"):
        export_model(module, (torch.randn(1, 2),), "onnx", tmp_path / "x.onnx", opset=13)
    with pytest.raises(TypeError, match="cannot export a Linear"):
        prepare_export(module, (32, 32))


def test_torch_export_keeps_the_op_node(tmp_path, cpu_backend):
    """torch.export traces the deformable attention as one ``deformbev::ms_deform_attn`` node; the saved
    program loads back and equals eager."""
    torch.manual_seed(0)
    attention = MSDeformAttn(
        embed_dims=32, num_levels=2, num_heads=4, num_points=2, backend=cpu_backend
    ).eval()
    torch.nn.init.normal_(attention.sampling_offsets.weight, std=0.5)
    shapes = torch.tensor([[6, 5], [3, 3]])
    starts = torch.tensor([0, 30])
    args = (torch.randn(2, 7, 32), torch.rand(2, 7, 2, 2), torch.randn(2, 39, 32), shapes, starts)
    path = tmp_path / "attention.pt2"
    program = export_model(attention, args, "export", path)
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.deformbev.ms_deform_attn.default in targets
    loaded = torch.export.load(path)
    new_args = (torch.randn(2, 7, 32), torch.rand(2, 7, 2, 2), torch.randn(2, 39, 32), shapes, starts)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(*new_args), attention(*new_args), atol=1e-6, rtol=1e-6)


FAST_EXPORT = ("deformable_detr", "deformable_detr_two_stage", "detr_r50")  # the others: slow (~20 s each)


@pytest.mark.parametrize(
    "name", [pytest.param(v, marks=() if v in FAST_EXPORT else pytest.mark.slow) for v in sorted(VARIANTS)]
)
def test_torch_export_detr2d_round_trip(tmp_path, cpu_backend, name):
    """The whole detector exports with free H and W and the op as one node (Deformable DETR; DETR has
    none); the saved program loads back and equals eager on two image sizes."""
    model = small_detr2d(name)
    wrapper, example = prepare_export(model, (80, 112))
    program = export_model(wrapper, example, "export", tmp_path / "detr.pt2")
    targets = [n.target for n in program.graph.nodes]
    assert (torch.ops.deformbev.ms_deform_attn.default in targets) == (name in DEFORMABLE_VARIANTS)
    images = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images")
    assert [isinstance(size, torch.SymInt) for size in images.meta["val"].shape] == [False, False, True, True]
    loaded = torch.export.load(tmp_path / "detr.pt2").module()
    for height, width in ((80, 112), (136, wrapper.min_image_size)):
        images = torch.randn(1, 3, height, width)
        with torch.no_grad():
            for got, expected in zip(loaded(images), wrapper(images), strict=True):
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_detr2d_export_refuses_small_example_images(tmp_path):
    """The graphs need two cells per side on the coarsest level (stride 64 here) and, for two-stage, as
    many encoder cells as proposals: smaller example images are refused with the bound."""
    wrapper, example = prepare_export(small_detr2d("deformable_detr"), (64, 96))
    assert wrapper.min_image_size == 65
    with pytest.raises(ValueError, match=r"at least 65 x 65 .* got \(64, 96\)"):
        export_model(wrapper, example, "export", tmp_path / "detr.pt2")
    torch.manual_seed(0)
    two_stage = build_model("deformable_detr_two_stage", backbone="resnet18", embed_dims=32, num_queries=300)
    # ceil(s / 8)^2 + ceil(s / 16)^2 + ceil(s / 32)^2 + ceil(s / 64)^2 >= 300 from s = 113 on
    assert Detr2dForExport(two_stage).min_image_size == 113


class MaskedDetr2d(torch.nn.Module):
    """The detector on a padded batch (images and mask)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, mask)
        return out["pred_logits"], out["pred_boxes"]


@pytest.mark.parametrize("padding", ["exact", "official"])
def test_torch_export_detr2d_with_mask(tmp_path, cpu_backend, padding):
    """With a mask input the traced graph always runs the masked math (eager skips it when nothing is
    padded): at the traced size it equals eager for other masks, an unpadded one included."""
    torch.manual_seed(0)
    model = build_model("deformable_detr", **NARROW, padding=padding)
    wrapper = MaskedDetr2d(random_offsets(model))
    mask = torch.zeros(2, 80, 112, dtype=torch.bool)
    mask[0, 60:], mask[1, :, 90:] = True, True
    program = export_model(wrapper, (torch.randn(2, 3, 80, 112), mask), "export", tmp_path / "masked.pt2")
    other = torch.zeros_like(mask)
    other[1, 40:], other[1, :, 56:] = True, True  # the second image is smaller, the first is unpadded
    for new_mask in (other, torch.zeros_like(mask)):
        images = torch.randn(2, 3, 80, 112)
        with torch.no_grad():
            for got, expected in zip(
                program.module()(images, new_mask), wrapper(images, new_mask), strict=True
            ):
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["bev", "detr3d"])
def test_bev_onnx_exported_at_batch_two_runs_batch_two(tmp_path, head):
    """``tools/export.py --batch 2``: a BEV graph traced at B = 2 equals PyTorch on two different samples
    (each with its own camera ring and, for BEVFormer, its own previous BEV)."""
    model = small_bev(head)
    wrapper, example = prepare_export(model, (64, 96), batch=2)
    path = tmp_path / f"{head}_b2.onnx"
    proto = export_model(wrapper, example, "onnx", path)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    ring = camera_ring(model.num_cams, (64, 96), batch=2)
    ring[1] = ring[1].roll(1, dims=0)  # the second sample's cameras in another order
    inputs = (torch.randn(2, model.num_cams, 3, 64, 96), ring, *example[2:])
    assert max(onnx_max_errors(wrapper, path, inputs)) < TOL
