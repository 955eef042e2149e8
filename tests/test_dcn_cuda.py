"""CUDA DCNv2 kernel: parity with the reference in four dtypes, gradcheck, module (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from dcn_cases import NAMES, forward_and_grads, random_dcn_case

from ops import ModulatedDeformConv2d, deform_conv2d

pytestmark = pytest.mark.cuda

TOLERANCE = {  # (atol, rtol) against the reference run in float64 on the same rounded inputs
    torch.float64: (1e-10, 0.0),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-2, 1e-2),
    torch.bfloat16: (0.25, 2e-2),
}

CONFIGS = [
    {},
    {"stride": (2, 2), "padding": (0, 0), "dilation": (2, 1)},
    {"groups": 2, "deform_groups": 2, "stride": (1, 3), "kernel": (3, 2), "padding": (1, 1)},
    {"batch": 3, "channels": 32, "out_channels": 16, "size": (19, 23), "offset_scale": 5.0, "bias": False},
    {"offset_scale": 0.0},
]


def backend_fn(backend):
    return lambda *args, **kwargs: deform_conv2d(*args, **kwargs, backend=backend)


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("config", CONFIGS)
def test_cuda_matches_reference(cuda_backend, dtype, config):
    case = random_dcn_case(0, dtype=dtype, **config)
    got = forward_and_grads(backend_fn(cuda_backend), case.to(device="cuda"))
    want = forward_and_grads(backend_fn("reference"), case.to(torch.float64), upstream_dtype=dtype)
    atol, rtol = TOLERANCE[dtype]
    for name, g, w in zip(NAMES, got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == dtype and g.is_cuda, name
        torch.testing.assert_close(
            g.cpu().double(), w, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_cuda_gradcheck(cuda_backend):
    case = random_dcn_case(4, channels=4, out_channels=2, size=(4, 5), groups=2, deform_groups=2).to(
        device="cuda"
    )
    tensors = [t.clone().requires_grad_() for t in case.tensors()]

    def fn(input, offset, mask, weight, bias):
        return deform_conv2d(input, offset, mask, weight, bias, **case.kwargs(), backend=cuda_backend)

    assert torch.autograd.gradcheck(fn, tuple(tensors), eps=1e-6, atol=1e-5, nondet_tol=1e-12)


def test_cuda_backward_alerts_under_deterministic_algorithms(cuda_backend):
    case = random_dcn_case(0, dtype=torch.float32).to(device="cuda")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # warn_only: cuBLAS (the GEMMs) also alerts without CUBLAS_WORKSPACE_CONFIG; the test needs our alert
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match="deform_conv2d_backward"):
            forward_and_grads(backend_fn(cuda_backend), case)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_cuda_module_matches_cpu(cuda_backend, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # conv_offset in full float32
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(16, 8, 3, padding=1, deform_groups=2)
    torch.nn.init.normal_(module.conv_offset.weight, std=0.1)
    x = torch.randn(2, 16, 12, 14)
    want = module(x)
    got = module.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)
