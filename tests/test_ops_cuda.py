"""CUDA backend: parity with the reference in four dtypes and gradcheck (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from msda_cases import (
    check_mixed_precision,
    check_non_finite_locations,
    forward_and_grads,
    random_case,
    random_inputs,
)

from ops import MSDeformAttn, ms_deform_attn

pytestmark = pytest.mark.cuda

NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
TOLERANCE = {  # (atol, rtol) against the reference run in float64 on the same rounded inputs
    torch.float64: (1e-10, 0.0),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def run(backend):
    return lambda *args: ms_deform_attn(*args, backend=backend)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("channels", [1, 30, 32, 64, 71, 257])
@pytest.mark.parametrize("seed", range(2))
def test_cuda_matches_reference(cuda_backend, dtype, channels, seed):
    inputs = random_case(seed, channels, dtype)
    got = forward_and_grads(run(cuda_backend), inputs.to(device="cuda"))
    want = forward_and_grads(run("reference"), inputs.to(torch.float64), upstream_dtype=dtype)
    atol, rtol = TOLERANCE[dtype]
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.dtype == dtype, name
        torch.testing.assert_close(
            g.cpu().double(), w, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_cuda_gradcheck(cuda_backend):
    inputs = random_inputs(0, 2, [(3, 4), (2, 3)], heads=2, channels=3, queries=4, points=2).to(device="cuda")
    value = inputs.value.requires_grad_()
    loc = inputs.sampling_locations.requires_grad_()
    weights = inputs.attention_weights.requires_grad_()

    def fn(v, l, w):
        return ms_deform_attn(v, inputs.spatial_shapes, inputs.level_start_index, l, w, backend=cuda_backend)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)


def test_cuda_module_matches_cpu(cuda_backend):
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=64, num_levels=2, num_heads=8, num_points=4)
    shapes = torch.tensor([[12, 9], [6, 5]])
    starts = torch.tensor([0, 108])
    query, flat = torch.randn(2, 20, 64), torch.randn(2, 138, 64)
    ref = torch.rand(2, 20, 2, 2)
    want = module(query, ref, flat, shapes, starts)
    got = module.cuda()(query.cuda(), ref.cuda(), flat.cuda(), shapes.cuda(), starts.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


def test_cuda_non_finite_locations_sample_nothing(cuda_backend):
    check_non_finite_locations(run(cuda_backend), device="cuda")


def test_cuda_backward_refuses_deterministic_mode(cuda_backend):
    """The value gradient is summed with atomic adds: torch.use_deterministic_algorithms(True) must
    raise in the CUDA backward (the forward is deterministic)."""
    inputs = random_inputs(0, 2, [(3, 4)], heads=2, channels=8, queries=4, points=2, dtype=torch.float32)
    value = inputs.value.cuda().requires_grad_()
    args = [t.cuda() for t in inputs.args()[1:]]
    torch.use_deterministic_algorithms(True)
    try:
        out = ms_deform_attn(value, *args, backend=cuda_backend)
        with pytest.raises(
            RuntimeError, match="ms_deform_attn_backward \\(CUDA\\) does not have a deterministic"
        ):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def test_cuda_registered_op_checks_devices(cuda_backend):
    inputs = random_inputs(0, 2, [(3, 4)], heads=2, channels=8, queries=4, points=2, dtype=torch.float32)
    args = [t.cuda() for t in inputs.args()]
    args[3] = args[3].cpu()
    with pytest.raises(RuntimeError, match="sampling_locations is on cpu but value is on cuda:0"):
        torch.ops.deformbev.ms_deform_attn(*args)


def test_cuda_kernel_skips_a_level_outside_value(cuda_backend):
    """The CUDA entry cannot read the level table without a device sync: a level that does not fit in
    value reads zero instead of memory beyond it (the eager Python front end raises first)."""
    inputs = random_inputs(
        1, 2, [(4, 5), (2, 3)], heads=2, channels=8, queries=4, points=2, dtype=torch.float32
    )
    args = [t.cuda() for t in inputs.args()]
    bad_starts = torch.tensor([0, 23], device="cuda")  # level 1 would end at 29 > S = 26
    out = torch.ops.deformbev.ms_deform_attn(args[0], args[1], bad_starts, *args[3:])
    torch.cuda.synchronize()
    level0_only = args[4].clone()
    level0_only[:, :, :, 1] = 0
    want = torch.ops.deformbev.ms_deform_attn(*args[:4], level0_only)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision_value_with_float32_locations(cuda_backend, dtype):
    check_mixed_precision(run(cuda_backend), dtype, device="cuda")
