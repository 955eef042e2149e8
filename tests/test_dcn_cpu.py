"""Native CPU DCNv2 kernel: parity with the reference (output and all five gradients), gradcheck, edges."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from dcn_cases import NAMES, forward_and_grads, random_dcn_case

from ops import deform_conv2d

TOLERANCE = {  # (atol, rtol) against the reference in float64 on the same rounded inputs; float32 sums
    # run over up to C * K = 1152 products (outputs ~30), summed in another order than the reference's
    torch.float64: (1e-10, 0.0),
    torch.float32: (5e-4, 1e-4),
    torch.bfloat16: (0.25, 2e-2),
    torch.float16: (2e-2, 1e-2),
}

CONFIGS = [
    {},
    {"stride": (2, 2), "padding": (0, 0)},
    {"dilation": (2, 1), "padding": (2, 1)},
    {"groups": 2, "out_channels": 4},
    {"deform_groups": 4, "kernel": (1, 3), "padding": (0, 1)},
    {"groups": 2, "deform_groups": 2, "stride": (1, 3), "kernel": (3, 2), "padding": (1, 1)},
    {"channels": 6, "groups": 3, "deform_groups": 2, "out_channels": 3, "bias": False, "size": (5, 4)},
    {"batch": 3, "channels": 16, "out_channels": 8, "size": (11, 13), "offset_scale": 5.0},
    {"offset_scale": 0.0},  # integer sampling positions, including exactly -1 in the padding
]


def backend_fn(backend):
    return lambda *args, **kwargs: deform_conv2d(*args, **kwargs, backend=backend)


def assert_matches(got, want, dtype):
    atol, rtol = TOLERANCE[dtype]
    for name, g, w in zip(NAMES, got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS)
def test_cpu_matches_reference(cpu_backend, dtype, config):
    case = random_dcn_case(0, dtype=dtype, **config)
    got = forward_and_grads(backend_fn(cpu_backend), case)
    want = forward_and_grads(backend_fn("reference"), case.to(torch.float64), upstream_dtype=dtype)
    assert_matches(got, want, dtype)


def test_cpu_matches_reference_over_several_chunks(cpu_backend):
    """C * K * Ho * Wo = 4.8M > 2^22 column elements: the kernels run over two chunks of positions."""
    case = random_dcn_case(2, batch=1, channels=128, out_channels=4, size=(60, 70), deform_groups=2)
    got = forward_and_grads(backend_fn(cpu_backend), case)
    want = forward_and_grads(backend_fn("reference"), case)
    assert_matches(got, want, torch.float64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_matches_reference(cpu_backend, dtype):
    case = random_dcn_case(1, channels=8, dtype=dtype, offset_scale=1.5)
    got = forward_and_grads(backend_fn(cpu_backend), case)
    want = forward_and_grads(backend_fn("reference"), case.to(torch.float64), upstream_dtype=dtype)
    assert_matches(got, want, dtype)


def test_gradcheck_cpu_op(cpu_backend):
    case = random_dcn_case(4, batch=2, channels=4, out_channels=2, size=(4, 5), groups=2, deform_groups=2)
    tensors = [t.clone().requires_grad_() for t in case.tensors()]

    def fn(input, offset, mask, weight, bias):
        return deform_conv2d(input, offset, mask, weight, bias, **case.kwargs(), backend=cpu_backend)

    assert torch.autograd.gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-5)


def test_offsets_outside_the_image(cpu_backend):
    """Points far outside read zeros; points straddling the border read their inside corners."""
    case = random_dcn_case(5)
    far = case.offset.clone()
    far[:, ::4] = 50.0  # dy of every other kernel point: far below the image
    out, *grads = forward_and_grads(backend_fn(cpu_backend), replace(case, offset=far))
    want_out, *want_grads = forward_and_grads(backend_fn("reference"), replace(case, offset=far))
    torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    grad_offset = grads[1]
    assert torch.count_nonzero(grad_offset[:, ::4]) == 0 and torch.count_nonzero(grad_offset[:, 1::4]) == 0


def test_zero_offsets_and_unit_mask_equal_conv2d(cpu_backend):
    case = random_dcn_case(
        6, channels=6, out_channels=4, groups=2, deform_groups=3, stride=(2, 1), dilation=(1, 2)
    )
    offset, mask = torch.zeros_like(case.offset), torch.ones_like(case.mask)
    got = deform_conv2d(
        case.input, offset, mask, case.weight, case.bias, **case.kwargs(), backend=cpu_backend
    )
    want = F.conv2d(case.input, case.weight, case.bias, case.stride, case.padding, case.dilation, case.groups)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_empty_batch(cpu_backend):
    case = random_dcn_case(0, batch=0, dtype=torch.float32)
    out, grad_input, grad_offset, grad_mask, grad_weight, grad_bias = forward_and_grads(
        backend_fn(cpu_backend), case
    )
    assert out.shape == (0, 6, 7, 9) and grad_input.shape == (0, 4, 7, 9) and grad_mask.shape == (0, 9, 7, 9)
    assert torch.count_nonzero(grad_weight) == 0 and torch.count_nonzero(grad_bias) == 0


def test_result_does_not_depend_on_the_thread_count(cpu_backend):
    # large enough that every kernel splits into several chunks of at::parallel_for
    case = random_dcn_case(8, batch=2, channels=32, out_channels=8, size=(40, 36), dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_and_grads(backend_fn(cpu_backend), case)
        torch.set_num_threads(max(2, threads))
        many = forward_and_grads(backend_fn(cpu_backend), case)
    finally:
        torch.set_num_threads(threads)
    # The kernels own their outputs (no atomics); the GEMM library may split sums differently.
    for name, a, b in zip(NAMES, one, many, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_direct_native_call_checks_shapes(cpu_backend):
    """The C++ checks stop out-of-bounds reads even without the Python validation."""
    case = random_dcn_case(0)
    native = torch.ops.deformbev_native.deform_conv2d_forward
    args = (case.input, case.offset, case.mask, case.weight, case.bias, 1, 1, 1, 1, 1, 1, 1, 1)
    torch.testing.assert_close(
        native(*args), deform_conv2d(*case.tensors(), **case.kwargs(), backend="reference")
    )
    with pytest.raises(RuntimeError, match="offset .* does not match the output size 7x9"):
        native(case.input, case.offset[..., :-1], *args[2:])
    with pytest.raises(RuntimeError, match="mask must be"):
        native(case.input, case.offset, case.mask[:, :-1], *args[3:])
    with pytest.raises(RuntimeError, match="does not match the output size"):
        native(*args[:5], 1, 1, 5, 1, 1, 1, 1, 1)  # padding 5 changes the output size
    with pytest.raises(RuntimeError, match="does not match input"):
        native(*args[:-2], 1, 3)  # deform_groups 3 does not divide 4 channels
    with pytest.raises(RuntimeError, match="bias must be"):
        native(*args[:4], case.bias[:-1], *args[5:])
    grad = torch.ones(2, 6, 7, 9, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="grad_output must be"):
        torch.ops.deformbev_native.deform_conv2d_backward(*args[:4], grad[:, :-1], *args[5:])
