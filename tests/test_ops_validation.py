"""Malformed inputs raise ValueError naming the argument, before any kernel runs; never a crash."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msda_cases import random_inputs

from ops import ms_deform_attn, resolve_backend


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


def test_batch_not_divisible_by_im2col_step():
    inputs = random_inputs(0, 3, [(4, 5)], heads=2, channels=4, queries=3, points=2)
    with pytest.raises(ValueError, match="batch size 3 must be divisible by im2col_step 2"):
        call(inputs, im2col_step=2)
    assert call(inputs, im2col_step=3).shape == (3, 3, 8)


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
