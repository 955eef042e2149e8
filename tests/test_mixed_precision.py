"""Mixed precision: float16/bfloat16 values with float32 sampling locations and weights, in the op (every
backend, its fake and autograd registrations, autocast) and end to end under ``torch.autocast`` on the CPU
(a small Deformable DETR and the BEV detectors, forward and backward)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    TinyBackbone,
    one_thread,  # noqa: F401 (autouse fixture)
    ring_lidar2img,
)
from msda_cases import check_mixed_precision, mixed_precision, random_case, random_inputs

import bev.detr3d_head
import bev.spatial_cross_attention
import bev.temporal_self_attention
import detr2d
import ops.module
from bev import build_bev_model
from ops import MSDeformAttn, ms_deform_attn

LOW = (torch.bfloat16, torch.float16)


def run(backend: str) -> Callable[..., torch.Tensor]:
    return lambda *args: ms_deform_attn(*args, backend=backend)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_low_precision_value_with_float32_locations(native_backends, backend, dtype):
    """Output and value gradient in the value's dtype, location and weight gradients in float32, each
    within its own rounding of the float64 result (the CUDA twin is in test_ops_cuda.py)."""
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")
    check_mixed_precision(run(backend), dtype)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float32_locations_keep_sampling_positions_exact(native_backends, backend):
    """On a 134-wide map bfloat16 locations lie 0.5 px apart (errors up to 0.26 px); with float32
    locations the bfloat16 op errs only by the rounding of its output (>= 10x less)."""
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")
    inputs = random_inputs(3, 1, [(100, 134)], heads=2, channels=16, queries=200, points=4, outside=0.0)
    value = inputs.value.to(torch.bfloat16)
    truth = ms_deform_attn(value.double(), *inputs.args()[1:], backend="reference")

    def error(locations: torch.Tensor) -> float:
        out = ms_deform_attn(
            value, *inputs.args()[1:3], locations, inputs.attention_weights.float(), backend=backend
        )
        return (out.double() - truth).abs().max().item()

    loc = inputs.sampling_locations
    assert 10 * error(loc.float()) < error(loc.to(torch.bfloat16))


def test_op_registrations_handle_mixed_dtypes(cpu_backend):
    """The custom op's schema, fake (meta) and autograd registrations with a bfloat16 value and float32
    locations and weights, as torch.compile sees them (torch.library.opcheck)."""
    inputs = mixed_precision(
        random_inputs(0, 2, [(4, 5), (2, 3)], heads=2, channels=4, queries=3, points=2), torch.bfloat16
    )
    args = [t.requires_grad_() if t.is_floating_point() else t for t in inputs.args()]
    results = torch.library.opcheck(torch.ops.deformbev.ms_deform_attn.default, args)
    assert set(results.values()) == {"SUCCESS"}, results


def test_autocast_leaves_the_op_inputs_alone(cpu_backend):
    """No autocast cast is registered for the custom op: under autocast it runs on the dtypes it gets
    (float32 locations are not downcast), bit for bit as outside autocast."""
    inputs = mixed_precision(random_case(5, 16), torch.bfloat16)
    outside = torch.ops.deformbev.ms_deform_attn(*inputs.args())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = torch.ops.deformbev.ms_deform_attn(*inputs.args())
        float32 = torch.ops.deformbev.ms_deform_attn(*inputs.to(torch.float32).args())
    assert inside.dtype == torch.bfloat16 and torch.equal(inside, outside)
    assert float32.dtype == torch.float32


def test_rejects_locations_wider_than_the_compute_dtype():
    inputs = random_inputs(0, 1, [(3, 4)], heads=1, channels=2, queries=2, points=1)
    with pytest.raises(
        ValueError, match="sampling_locations has dtype torch.float64 but value has torch.bfloat16"
    ):
        ms_deform_attn(inputs.value.bfloat16(), *inputs.args()[1:4], inputs.attention_weights.float())


def test_module_compiles_under_autocast(cpu_backend):
    """MSDeformAttn under CPU autocast through torch.compile(fullgraph=True) (the fake registrations
    give the real dtypes): forward and backward equal eager."""
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_levels=2, num_heads=4, num_points=2, backend=cpu_backend)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
    shapes, starts = torch.tensor([[6, 8], [3, 4]]), torch.tensor([0, 48])
    query, flat, ref = torch.randn(2, 7, 32), torch.randn(2, 60, 32), torch.rand(2, 7, 2, 2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (module, compiled):
        q = query.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, ref, flat, shapes, starts)
        out.float().square().sum().backward()
        results.append((out, q.grad))
    assert results[0][0].dtype == torch.bfloat16
    torch.testing.assert_close(results[1], results[0])


CALLERS = (ops.module, bev.spatial_cross_attention, bev.temporal_self_attention, bev.detr3d_head)


def spy_on_op_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.dtype, torch.dtype]]:
    """Records (caller, value dtype, sampling_locations dtype) of every call of the op by a module."""
    calls = []
    for caller in CALLERS:

        def spy(value, spatial_shapes, level_start_index, locations, *args, _name=caller.__name__, **kwargs):
            calls.append((_name, value.dtype, locations.dtype))
            return ms_deform_attn(value, spatial_shapes, level_start_index, locations, *args, **kwargs)

        monkeypatch.setattr(caller, "ms_deform_attn", spy)
    return calls


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def forward_backward(
    make: Callable[[], torch.nn.Module], run_model: Callable[[torch.nn.Module], list[torch.Tensor]], amp: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Outputs and the flattened parameter gradients of a mean-square loss, in float32 or under autocast."""
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        outputs = run_model(model)
    sum(o.float().square().mean() for o in outputs).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return [o.detach() for o in outputs], grads


def check_autocast_matches_float32(
    make: Callable[[], torch.nn.Module],
    run_model: Callable[[torch.nn.Module], list[torch.Tensor]],
    monkeypatch: pytest.MonkeyPatch,
    output_tolerance: float = 0.02,
) -> None:
    """Under CPU autocast (bfloat16) every op call gets a bfloat16 value and float32 locations, and
    the outputs and the parameter gradients are within ``output_tolerance`` and 10% (relative L2) of
    float32 (measured: outputs <= 1%, gradients <= 4%)."""
    outputs, grads = forward_backward(make, run_model, amp=False)
    calls = spy_on_op_calls(monkeypatch)
    amp_outputs, amp_grads = forward_backward(make, run_model, amp=True)
    assert calls and all(value == torch.bfloat16 for _, value, _ in calls), calls
    assert all(loc == torch.float32 for _, _, loc in calls), calls  # positions stay float32
    for got, want in zip(amp_outputs, outputs, strict=True):
        assert want.dtype == torch.float32
        assert relative_error(got, want) < output_tolerance
    assert relative_error(amp_grads, grads) < 0.1


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_deformable_detr_under_autocast(native_backends, backend, monkeypatch):
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return detr2d.build_model(
            "deformable_detr",
            backbone="resnet18",
            embed_dims=64,
            num_heads=4,
            ffn_dims=128,
            encoder_layers=2,
            decoder_layers=2,
            num_queries=20,
            num_classes=5,
            dropout=0.0,
            backend=backend,
        ).train()

    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 80:] = True  # the second image is padded on the right

    def run_model(model: torch.nn.Module) -> list[torch.Tensor]:
        out = model(images, mask)
        return [out["pred_logits"], out["pred_boxes"]]

    check_autocast_matches_float32(make, run_model, monkeypatch)


def test_detr_under_autocast():
    """DETR (no deformable op) under CPU bfloat16 autocast, on a padded batch: the outputs are bfloat16
    and within 2%, the parameter gradients within 10% (relative L2) of float32."""

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return detr2d.build_model(
            "detr_r50",
            backbone="resnet18",
            embed_dims=64,
            num_heads=4,
            ffn_dims=128,
            encoder_layers=2,
            decoder_layers=2,
            num_queries=20,
            num_classes=5,
            dropout=0.0,
        ).train()

    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 80:] = True

    def run_model(model: torch.nn.Module) -> list[torch.Tensor]:
        out = model(images, mask)
        return [out["pred_logits"], out["pred_boxes"]]

    outputs, grads = forward_backward(make, run_model, amp=False)
    amp_outputs, amp_grads = forward_backward(make, run_model, amp=True)
    for got, want in zip(amp_outputs, outputs, strict=True):
        assert got.dtype == torch.bfloat16 and want.dtype == torch.float32
        assert relative_error(got, want) < 0.02
    assert relative_error(amp_grads, grads) < 0.1


# The BEV features deviate 5.6% under autocast while bev.projection.project_to_cameras runs in bfloat16
# (0.3% with the projection in float32): 2% once it does.
BEV_OUTPUT_TOLERANCE = 0.02


@pytest.mark.parametrize("head", ["bev", "detr3d"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bev_detector_under_autocast(native_backends, head, backend, monkeypatch):
    """The BEV detector (temporal self-attention, spatial cross-attention, deformable decoder) and the
    DETR3D head: every module that calls the op."""
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")

    def make() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_bev_model(
            "bev_demo",
            head=head,
            backbone_module=TinyBackbone(),
            num_levels=2,
            embed_dims=32,
            ffn_dims=64,
            num_heads=4,
            bev_h=8,
            bev_w=8,
            encoder_layers=2,
            sca_points=4,
            decoder_layers=2,
            num_queries=20,
            max_num=50,
            dropout=0.0,
            backend=backend,
        ).train()

    img = torch.randn(2, 6, 3, *IMG_SHAPE, generator=torch.Generator().manual_seed(2))
    lidar2img = ring_lidar2img()[None].expand(2, -1, -1, -1)

    def run_model(model: torch.nn.Module) -> list[torch.Tensor]:
        outputs, bev_features = model.predict(img, lidar2img)
        extra = [] if bev_features is None else [bev_features]
        return [outputs.cls_logits[-1], outputs.box_code[-1], *extra]

    check_autocast_matches_float32(make, run_model, monkeypatch, BEV_OUTPUT_TOLERANCE)
