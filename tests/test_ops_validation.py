"""Malformed inputs raise ValueError naming the argument, before any kernel runs; never a crash."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msda_cases import random_inputs

from ops import MSDeformAttn, ms_deform_attn, resolve_backend


def good(dtype=torch.float32):
    return random_inputs(0, 2, [(4, 5), (2, 3)], heads=2, channels=4, queries=3, points=2, dtype=dtype)


def call(inputs, **changes):
    args = dict(
        value=inputs.value,
        spatial_shapes=inputs.spatial_shapes,
        level_start_index=inputs.level_start_index,
        sampling_locations=inputs.sampling_locations,
        attention_weights=inputs.attention_weights,
    )
    args.update(changes)
    backend = args.pop("backend", None)
    im2col_step = args.pop("im2col_step", 64)
    return ms_deform_attn(**args, im2col_step=im2col_step, backend=backend)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: {"value": i.value[0]}, r"value must have shape \(N, S, M, D\)"),
        (lambda i: {"value": i.value[:, :-1]}, "S = 25 positions but spatial_shapes sum to 26"),
        (lambda i: {"spatial_shapes": i.spatial_shapes[:, :1]}, r"spatial_shapes must have shape \(L, 2\)"),
        (lambda i: {"spatial_shapes": i.spatial_shapes.int()}, "spatial_shapes must be int64"),
        (lambda i: {"level_start_index": i.level_start_index + 1}, "exclusive cumsum"),
        (
            lambda i: {"level_start_index": i.level_start_index[:1]},
            r"level_start_index must have shape \(2,\)",
        ),
        (
            lambda i: {"sampling_locations": i.sampling_locations[..., :1]},
            "sampling_locations must have shape",
        ),
        (lambda i: {"sampling_locations": i.sampling_locations[:, :, :1]}, r"\(2, 3, 2, 2, 2, 2\)"),
        (lambda i: {"attention_weights": i.attention_weights[..., :1]}, "attention_weights must have shape"),
        (lambda i: {"attention_weights": i.attention_weights.double()}, "attention_weights has dtype"),
        (lambda i: {"value": i.value.long()}, "value must be a floating tensor"),
        (lambda i: {"value": i.value.tolist()}, "value must be a torch.Tensor"),
        (lambda i: {"spatial_shapes": torch.tensor([[0, 5], [2, 3]])}, "must be positive"),
        (lambda i: {"value": i.value.to("meta")}, "spatial_shapes is on cpu but value is on meta"),
        (lambda i: {"im2col_step": 0}, "im2col_step must be a positive int"),
        (lambda i: {"backend": "gpu"}, "backend must be one of"),
        (lambda i: {"backend": "cuda"}, "cannot run on tensors on cpu"),
    ],
)
def test_named_errors(change, message):
    inputs = good()
    with pytest.raises(ValueError, match=message):
        call(inputs, **change(inputs))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_any_batch_size_with_any_im2col_step(native_backends, backend):
    """im2col_step is accepted and ignored: MSDeformAttn (im2col_step=64) runs 65 images, and each image
    gets what it gets alone."""
    if backend not in native_backends:
        pytest.skip(f"the {backend!r} backend is not built")
    torch.manual_seed(0)
    module = MSDeformAttn(
        embed_dims=16, num_levels=2, num_heads=2, num_points=2, im2col_step=64, backend=backend
    )
    shapes = torch.tensor([[4, 5], [2, 3]])
    starts = torch.tensor([0, 20])
    query, flat, ref = torch.randn(65, 3, 16), torch.randn(65, 26, 16), torch.rand(65, 3, 2, 2)
    out = module(query, ref, flat, shapes, starts)
    assert out.shape == (65, 3, 16)
    torch.testing.assert_close(out[64:], module(query[64:], ref[64:], flat[64:], shapes, starts))
    inputs = random_inputs(0, 3, [(4, 5)], heads=2, channels=4, queries=3, points=2)
    torch.testing.assert_close(call(inputs, im2col_step=2, backend=backend), call(inputs, backend=backend))


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("DEFORMBEV_MSDA_BACKEND", "reference")
    assert resolve_backend(torch.device("cpu")) == "reference"
    monkeypatch.setenv("DEFORMBEV_MSDA_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"\$DEFORMBEV_MSDA_BACKEND must be one of"):
        resolve_backend(torch.device("cpu"))


def test_out_of_range_locations_are_legal():
    inputs = good()
    out = call(inputs, sampling_locations=inputs.sampling_locations * 10 - 5)
    assert torch.isfinite(out).all()


dims = st.integers(min_value=0, max_value=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value_shape=st.lists(dims, min_size=1, max_size=5),
    shapes=st.lists(st.tuples(st.integers(-1, 4), st.integers(-1, 4)), min_size=0, max_size=3),
    loc_shape=st.lists(dims, min_size=1, max_size=7),
    weight_shape=st.lists(dims, min_size=1, max_size=6),
    starts_shift=st.integers(-2, 2),
    im2col_step=st.integers(-1, 3),
    backend=st.sampled_from([None, "reference", "cpu"]),
)
def test_fuzzed_inputs_raise_value_error_or_run(
    native_backends, value_shape, shapes, loc_shape, weight_shape, starts_shift, im2col_step, backend
):
    """Random shapes: either a clean ValueError or a result of the documented shape, never a crash."""
    if backend == "cpu" and "cpu" not in native_backends:
        backend = "reference"
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64).view(-1, 2)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])[: len(shapes)] + starts_shift
    try:
        out = ms_deform_attn(
            torch.randn(value_shape),
            spatial_shapes,
            starts,
            torch.rand(loc_shape),
            torch.rand(weight_shape),
            im2col_step=im2col_step,
            backend=backend,
        )
    except ValueError:
        return
    n, _, m, d = value_shape
    assert out.shape == (n, loc_shape[1], m * d)


def direct_forward(inputs, **changes):
    """The registered custom op, as a torch.compile graph calls it: no Python validation in front."""
    args = dict(
        value=inputs.value,
        spatial_shapes=inputs.spatial_shapes,
        level_start_index=inputs.level_start_index,
        sampling_locations=inputs.sampling_locations,
        attention_weights=inputs.attention_weights,
    )
    args.update(changes)
    return torch.ops.deformbev.ms_deform_attn(*args.values())


UNSAFE_FORWARD = [  # inputs of good(): value (2, 26, 2, 4), levels (4, 5) at 0 and (2, 3) at 20
    (
        {"level_start_index": torch.tensor([0, 21])},
        r"level 1 .*start = 21\) must have H, W > 0 and start \+ H \* W <= S = 26",
    ),
    ({"level_start_index": torch.tensor([-1, 20])}, r"level 0 .*start = -1\)"),
    (
        {"spatial_shapes": torch.tensor([[2**62, 4], [2, 3]])},
        r"level 0 of spatial_shapes/level_start_index \(H = 4611686018427387904, W = 4",
    ),
    (
        {"spatial_shapes": torch.tensor([[0, 5], [2, 3]])},
        r"level 0 of spatial_shapes/level_start_index \(H = 0",
    ),
    (
        {"spatial_shapes": torch.tensor([[4, 5], [-2, -3]])},
        r"level 1 of spatial_shapes/level_start_index \(H = -2",
    ),
    ({"spatial_shapes": torch.tensor([[4, 5], [2, 3]], dtype=torch.int32)}, "spatial_shapes must be int64"),
    ({"spatial_shapes": torch.tensor([4, 5, 2, 3])}, r"spatial_shapes must be \(L, 2\)"),
    ({"level_start_index": torch.tensor([0])}, r"level_start_index \[1\] must have the L = 2 levels"),
    ({"level_start_index": torch.tensor([0.0, 20.0])}, "level_start_index must be int64"),
]


@pytest.mark.parametrize(("change", "message"), UNSAFE_FORWARD)
def test_registered_op_rejects_unsafe_level_tables(cpu_backend, change, message):
    """The C++ entry points check what would read out of bounds (the Python checks are skipped under
    torch.compile): a RuntimeError naming the argument, never a crash."""
    with pytest.raises(RuntimeError, match=message):
        direct_forward(good(), **change)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: {"value": i.value[0]}, r"value must be \(N, S, M, D\), got \[26, 2, 4\]"),
        (
            lambda i: {"value": i.value.long()},
            "value must be float16, bfloat16, float32 or float64, got Long",
        ),
        (
            lambda i: {"sampling_locations": i.sampling_locations[..., :1]},
            r"sampling_locations must be \(N, Lq",
        ),
        (
            lambda i: {"sampling_locations": i.sampling_locations[:1]},
            "sampling_locations .* does not match value",
        ),
        (
            lambda i: {"sampling_locations": i.sampling_locations[:, :, :1]},
            "does not match value .* in N or M",
        ),
        (lambda i: {"sampling_locations": i.sampling_locations[:, :, :, :1]}, "must have the L = 1 levels"),
        (
            lambda i: {"attention_weights": i.attention_weights[..., :1]},
            "attention_weights .* does not match",
        ),
        (
            lambda i: {"attention_weights": i.attention_weights[0]},
            r"attention_weights must be \(N, Lq, M, L, P\)",
        ),
        (
            lambda i: {"sampling_locations": i.sampling_locations.double()},
            "sampling_locations has dtype Double",
        ),
        (lambda i: {"attention_weights": i.attention_weights.int()}, "attention_weights has dtype Int"),
    ],
)
def test_registered_op_checks_every_argument(cpu_backend, change, message):
    inputs = good()
    with pytest.raises(RuntimeError, match=message):
        direct_forward(inputs, **change(inputs))


@pytest.mark.parametrize(
    ("grad_output", "message"),
    [
        (torch.zeros(2, 3, 7), r"grad_output must be \(N, Lq, M \* D\) = \(2, 3, 8\), got \[2, 3, 7\]"),
        (torch.zeros(2, 3, 8, dtype=torch.float64), "grad_output has dtype Double but value .* has Float"),
        (torch.zeros(8), r"grad_output must be \(N, Lq, M \* D\)"),
    ],
)
def test_registered_backward_checks_grad_output(cpu_backend, grad_output, message):
    inputs = good()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.deformbev.ms_deform_attn_backward(*inputs.args(), grad_output)
    bad_starts = torch.tensor([0, 21])
    args = (*inputs.args()[:2], bad_starts, *inputs.args()[3:])
    with pytest.raises(RuntimeError, match="level 1 .*start = 21"):
        torch.ops.deformbev.ms_deform_attn_backward(*args, torch.zeros(2, 3, 8))


def test_compiled_graph_rejects_an_unsafe_level_table(cpu_backend):
    """Under torch.compile the Python level check is skipped; the kernel's own check still raises."""

    def fn(value, shapes, starts, loc, weights):
        return ms_deform_attn(value, shapes, starts, loc, weights, backend=cpu_backend)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    inputs = good()
    torch.testing.assert_close(compiled(*inputs.args()), fn(*inputs.args()))
    with pytest.raises(RuntimeError, match="level 1 .*start = 21"):
        compiled(*inputs.args()[:2], torch.tensor([0, 21]), *inputs.args()[3:])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    heights=st.lists(st.integers(-2, 5), min_size=1, max_size=3),
    widths=st.lists(st.integers(-2, 5), min_size=3, max_size=3),
    starts_shift=st.lists(st.integers(-3, 3), min_size=3, max_size=3),
    spatial=st.integers(0, 40),
    locations=st.sampled_from([0.5, -0.2, 1.2, float("nan"), float("inf")]),
)
def test_fuzzed_level_tables_raise_or_run_on_the_registered_op(
    cpu_backend, heights, widths, starts_shift, spatial, locations
):
    """Any level table: a RuntimeError, or a finite result (forward and backward) when every level fits."""
    num_levels = len(heights)
    shapes = torch.tensor(list(zip(heights, widths[:num_levels], strict=True)), dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]]) + torch.tensor(starts_shift[:num_levels])
    value = torch.randn(2, spatial, 2, 3, requires_grad=True)
    loc = torch.full((2, 4, 2, num_levels, 2, 2), locations, requires_grad=True)
    weights = torch.rand(2, 4, 2, num_levels, 2, requires_grad=True)
    fits = all(
        h > 0 and w > 0 and 0 <= s and s + h * w <= spatial
        for (h, w), s in zip(shapes.tolist(), starts.tolist(), strict=True)
    )
    try:
        out = torch.ops.deformbev.ms_deform_attn(value, shapes, starts, loc, weights)
        out.sum().backward()
    except RuntimeError as exc:
        assert not fits and "must have H, W > 0 and start + H * W <= S" in str(exc)
        return
    assert fits and torch.isfinite(out).all() and torch.isfinite(loc.grad).all()
