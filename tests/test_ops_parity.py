"""The native CPU backend against the grid_sample reference: outputs and all three gradients."""

from __future__ import annotations

import pytest
import torch
from msda_cases import check_non_finite_locations, forward_and_grads, random_case, random_inputs

from ops import ms_deform_attn
from ops.reference import ms_deform_attn_reference

CHANNELS = (1, 30, 32, 64, 71, 257)
NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")


def run(backend: str):
    def fn(*args):
        return ms_deform_attn(*args, backend=backend)

    return fn


def assert_close(actual, expected, atol: float, rtol: float) -> None:
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("seed", range(4))
def test_cpu_matches_reference_float64(cpu_backend, seed, channels):
    inputs = random_case(seed, channels, torch.float64)
    assert_close(
        forward_and_grads(run(cpu_backend), inputs), forward_and_grads(run("reference"), inputs), 1e-10, 0
    )


def per_pixel(results, spatial_shapes: torch.Tensor):
    """Location gradients in pixel units: d/d(x * W_l) = (d/dx) / W_l (and y / H_l per level)."""
    out, grad_value, grad_loc, grad_weights = results
    pixels = spatial_shapes.flip(-1).to(grad_loc)  # (L, 2) as (W, H)
    return out, grad_value, grad_loc / pixels[:, None, :], grad_weights


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("seed", range(4))
def test_cpu_matches_reference_float32(cpu_backend, seed, channels):
    """Max abs diff 1e-5, plus 1e-5 relative for sums over many channels (D = 257 sums reach values
    ~20, whose float32 rounding alone is ~1e-6 per term). The location gradient is compared per
    pixel (divided by W_l, H_l): per unit of the normalized coordinate it is W_l times larger."""
    inputs = random_case(seed, channels, torch.float32)
    shapes = inputs.spatial_shapes
    assert_close(
        per_pixel(forward_and_grads(run(cpu_backend), inputs), shapes),
        per_pixel(forward_and_grads(run("reference"), inputs), shapes),
        1e-5,
        1e-5,
    )


@pytest.mark.parametrize("channels", [32, 257])
def test_cpu_float32_is_as_accurate_as_reference(cpu_backend, channels):
    """Against float64 truth, the float32 kernel errs no more than the float32 reference (+ 1e-6)."""
    inputs = random_case(11, channels, torch.float64)
    truth = forward_and_grads(run("reference"), inputs)
    ours = forward_and_grads(run(cpu_backend), inputs.to(torch.float32))
    theirs = forward_and_grads(run("reference"), inputs.to(torch.float32))
    for name, t, o, r in zip(NAMES, truth, ours, theirs, strict=True):
        err_ours = (o.double() - t).abs().max().item()
        err_ref = (r.double() - t).abs().max().item()
        assert err_ours <= 2 * err_ref + 1e-6, f"{name}: ours {err_ours:.3g} vs reference {err_ref:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_storage_accumulates_in_float(cpu_backend, dtype):
    """bf16/fp16 inputs equal float32 math on the same (rounded) inputs, up to output rounding."""
    inputs = random_case(3, 32, dtype)
    got = forward_and_grads(run(cpu_backend), inputs)
    want = forward_and_grads(run("reference"), inputs.to(torch.float32), upstream_dtype=dtype)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(
            g.float(), w, atol=2e-2, rtol=2e-2, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_locations_on_grid_points_and_borders(cpu_backend):
    """Integer pixel positions, map borders and far-outside points (all read zeros beyond the map)."""
    shapes = [(3, 5), (2, 2)]
    inputs = random_inputs(0, 1, shapes, heads=2, channels=4, queries=6, points=3, dtype=torch.float64)
    xs = torch.tensor([0.0, 0.1, 0.5, 1.0, -0.5, 2.0], dtype=torch.float64)
    loc = inputs.sampling_locations.clone()
    loc[0, :, :, :, :, 0] = xs.view(6, 1, 1, 1)
    loc[0, :, :, :, :, 1] = xs.flip(0).view(6, 1, 1, 1)
    inputs.sampling_locations = loc
    assert_close(
        forward_and_grads(run(cpu_backend), inputs), forward_and_grads(run("reference"), inputs), 1e-10, 0
    )
    far = inputs.sampling_locations.clone().fill_(5.0)
    out = ms_deform_attn(*inputs.args()[:3], far, inputs.attention_weights, backend=cpu_backend)
    assert torch.count_nonzero(out) == 0


def test_zero_queries(cpu_backend):
    inputs = random_inputs(0, 2, [(4, 4)], heads=2, channels=8, queries=0, points=2)
    out = ms_deform_attn(*inputs.args(), backend=cpu_backend)
    assert out.shape == (2, 0, 16)


def test_reference_is_bilinear_interpolation():
    """The oracle itself against a hand computation: a 2x2 map sampled at its centre averages it."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    centre = torch.full((1, 1, 1, 1, 1, 2), 0.5, dtype=torch.float64)
    weight = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_reference(value, shapes, torch.tensor([0]), centre, weight)
    assert out.item() == pytest.approx(2.5)
    # pixel centre of (row 1, col 0) = (x, y) = (0.25, 0.75) reads exactly 3
    out = ms_deform_attn_reference(
        value, shapes, torch.tensor([0]), torch.tensor([0.25, 0.75]).view(centre.shape).double(), weight
    )
    assert out.item() == pytest.approx(3.0)


@pytest.mark.parametrize(("queries", "layout"), [(2, "in place (sparse sampling)"), (300, "head-major copy")])
def test_cpu_both_value_layouts(cpu_backend, queries, layout):
    """The CPU kernels read value in place when Lq * L * P < S and from a head-major copy otherwise."""
    inputs = random_inputs(5, 2, [(9, 11), (5, 6)], heads=3, channels=16, queries=queries, points=2)
    assert (queries * 2 * 2 >= 129) == (layout == "head-major copy")
    assert_close(
        forward_and_grads(run(cpu_backend), inputs), forward_and_grads(run("reference"), inputs), 1e-10, 0
    )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_non_finite_locations_sample_nothing(native_backends, backend):
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")
    check_non_finite_locations(run(backend))


@pytest.mark.parametrize("channels", [30, 32])  # the runtime channel loop and the vector kernel
def test_cpu_backward_is_bitwise_deterministic_whatever_the_thread_count(cpu_backend, channels):
    """Many queries sample a small map, so every value row receives many contributions: the gradients
    must be the same bits on every run and with 1 or 2 threads (no atomics, a fixed summation order)."""
    inputs = random_inputs(
        2, 2, [(6, 5), (3, 4)], heads=4, channels=channels, queries=700, points=4, dtype=torch.float32
    )
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 2):
            torch.set_num_threads(count)
            results.append(forward_and_grads(run(cpu_backend), inputs))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for name, a, b in zip(NAMES, results[0], other, strict=True):
            assert torch.equal(a, b), name
