"""Malformed DCNv2 inputs raise ValueError naming the argument, before any kernel runs; backend choice."""

from __future__ import annotations

import pytest
import torch
from dcn_cases import random_dcn_case

from ops import deform_conv2d, resolve_deform_conv_backend


def call(change):
    case = random_dcn_case(0, dtype=torch.float32)
    args = {
        "input": case.input,
        "offset": case.offset,
        "mask": case.mask,
        "weight": case.weight,
        "bias": case.bias,
        **case.kwargs(),
    }
    args.update(change(case))
    return deform_conv2d(**args)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: {"input": c.input[0]}, r"input must have shape \(N, C, H, W\), got \(4, 7, 9\)"),
        (lambda c: {"input": c.input.tolist()}, "input must be a torch.Tensor, got list"),
        (lambda c: {"input": c.input[:, :0]}, "input must have at least one channel"),
        (lambda c: {"weight": c.weight[0]}, r"weight must have shape \(O, C / groups, kh, kw\)"),
        (lambda c: {"weight": c.weight[:, :3]}, r"weight must have shape \(6, 4, kh >= 1, kw >= 1\)"),
        (lambda c: {"offset": c.offset[:, :-1]}, r"offset must have shape \(2, 18, 7, 9\)"),
        (
            lambda c: {"offset": c.offset[..., :-1]},
            r"offset must have shape \(2, 18, 7, 9\) \(N, 2 \* deform",
        ),
        (lambda c: {"mask": c.mask[:1]}, r"mask must have shape \(2, 9, 7, 9\)"),
        (lambda c: {"bias": c.bias[:-1]}, r"bias must have shape \(6,\) \(O,\), got \(5,\)"),
        (lambda c: {"mask": c.mask.double()}, "mask has dtype torch.float64 but input has torch.float32"),
        (lambda c: {"input": c.input.long()}, "input must be a floating tensor, got torch.int64"),
        (lambda c: {"weight": c.weight.to("meta")}, "weight is on meta but input is on cpu"),
        (
            lambda c: {"groups": 4},
            r"groups \(4\) must divide the input channels \(4\) and the output channels \(6\)",
        ),
        (lambda c: {"groups": 0}, "groups must be a positive int, got 0"),
        (lambda c: {"deform_groups": 3}, r"deform_groups \(3\) must divide the input channels \(4\)"),
        (lambda c: {"deform_groups": True}, "deform_groups must be a positive int, got True"),
        (lambda c: {"stride": 0}, "stride must be an int >= 1 or a pair of them, got 0"),
        (lambda c: {"stride": (1, 1, 1)}, r"stride must be an int >= 1 or a pair of them, got \(1, 1, 1\)"),
        (lambda c: {"padding": -1}, "padding must be an int >= 0"),
        (lambda c: {"dilation": (1, 1.5)}, "dilation must be an int >= 1"),
        (lambda c: {"input": c.input[:, :, :1, :1], "padding": 0}, "is too small for a 3x3 kernel"),
        (lambda c: {"backend": "gpu"}, "backend must be one of"),
        (lambda c: {"backend": "cuda"}, "cannot run on tensors on cpu"),
    ],
)
def test_named_errors(change, message):
    with pytest.raises(ValueError, match=message):
        call(change)


def test_environment_variable_chooses_the_backend(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("DEFORMBEV_DCN_BACKEND", "reference")
    assert resolve_deform_conv_backend(cpu) == "reference"
    monkeypatch.setenv("DEFORMBEV_MSDA_BACKEND", "reference")
    monkeypatch.setenv("DEFORMBEV_DCN_BACKEND", "")
    assert resolve_deform_conv_backend(cpu, "reference") == "reference"
    monkeypatch.setenv("DEFORMBEV_DCN_BACKEND", "tpu")
    with pytest.raises(ValueError, match=r"\$DEFORMBEV_DCN_BACKEND must be one of"):
        resolve_deform_conv_backend(cpu)


def test_automatic_backend_is_the_native_kernel_of_the_device(monkeypatch, native_backends):
    monkeypatch.delenv("DEFORMBEV_DCN_BACKEND", raising=False)
    monkeypatch.setenv("DEFORMBEV_MSDA_BACKEND", "reference")  # the attention op's choice is its own
    want = "cpu" if "cpu" in native_backends else "reference"
    assert resolve_deform_conv_backend(torch.device("cpu")) == want
    assert resolve_deform_conv_backend(torch.device("meta")) == "reference"
