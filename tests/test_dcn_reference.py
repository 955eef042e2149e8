"""The DCNv2 reference (the test oracle) against a naive scalar loop, F.conv2d and its edge cases."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from dcn_cases import forward_and_grads, random_dcn_case

from ops import deform_conv2d


def reference(*args, **kwargs):
    return deform_conv2d(*args, **kwargs, backend="reference")


def naive_deform_conv2d(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    """out[n, o, i, j] written as scalar loops over (c, ki, kj) with explicit bilinear corners."""
    x, off, msk, w = input.tolist(), offset.tolist(), mask.tolist(), weight.tolist()
    n_batch, channels, height, width = input.shape
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    k_points = kernel_h * kernel_w

    def bilinear(plane, y, xx):
        y0, x0 = math.floor(y), math.floor(xx)
        total = 0.0
        for row, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            for col, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                if 0 <= row < height and 0 <= col < width:
                    total += wy * wx * plane[row][col]
        return total

    out = torch.zeros(n_batch, out_channels, out_h, out_w, dtype=torch.float64)
    for n in range(n_batch):
        for o in range(out_channels):
            conv_group = o // (out_channels // groups)
            for i in range(out_h):
                for j in range(out_w):
                    acc = 0.0 if bias is None else float(bias[o])
                    for cw in range(channels_per_group):
                        c = conv_group * channels_per_group + cw
                        g = c // (channels // deform_groups)
                        for ki in range(kernel_h):
                            for kj in range(kernel_w):
                                k = g * k_points + ki * kernel_w + kj
                                y = i * stride[0] - padding[0] + ki * dilation[0] + off[n][2 * k][i][j]
                                xx = j * stride[1] - padding[1] + kj * dilation[1] + off[n][2 * k + 1][i][j]
                                sample = bilinear(x[n][c], y, xx)
                                acc += w[o][cw][ki][kj] * msk[n][k][i][j] * sample
                    out[n, o, i, j] = acc
    return out


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "kernel": (2, 3),
            "stride": (2, 1),
            "padding": (1, 0),
            "dilation": (1, 2),
            "groups": 2,
            "deform_groups": 2,
        },
        {
            "size": (4, 5),
            "channels": 6,
            "out_channels": 3,
            "deform_groups": 3,
            "groups": 3,
            "offset_scale": 4.0,
        },
    ],
)
def test_reference_matches_naive_loops(config):
    case = random_dcn_case(7, batch=1, **config)
    want = naive_deform_conv2d(*case.tensors(), **case.kwargs())
    got = reference(*case.tensors(), **case.kwargs())
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_reference_without_bias_matches_naive_loops():
    case = random_dcn_case(3, batch=2, bias=False)
    want = naive_deform_conv2d(*case.tensors(), None, **case.kwargs())
    torch.testing.assert_close(reference(*case.tensors(), **case.kwargs()), want, atol=1e-12, rtol=0)


CONV_CONFIGS = [
    {},
    {"stride": (2, 2), "padding": (0, 0)},
    {"dilation": (2, 1), "padding": (2, 1)},
    {"groups": 2, "out_channels": 4},
    {"deform_groups": 4, "kernel": (1, 3), "padding": (0, 1)},
    {"groups": 2, "deform_groups": 2, "stride": (1, 3), "kernel": (3, 2), "padding": (1, 1)},
]


@pytest.mark.parametrize("config", CONV_CONFIGS)
def test_zero_offsets_and_unit_mask_equal_conv2d(config):
    case = random_dcn_case(1, **config)
    offset, mask = torch.zeros_like(case.offset), torch.ones_like(case.mask)
    got = reference(case.input, offset, mask, case.weight, case.bias, **case.kwargs())
    want = F.conv2d(case.input, case.weight, case.bias, case.stride, case.padding, case.dilation, case.groups)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_offsets_outside_the_image_read_zeros():
    case = random_dcn_case(2)
    far = torch.full_like(case.offset, 100.0)
    far[:, 1::2] = -50.0  # dx
    out, grad_input, grad_offset, grad_mask, grad_weight, grad_bias = forward_and_grads(
        reference, replace(case, offset=far)
    )
    torch.testing.assert_close(out, case.bias.view(1, -1, 1, 1).expand_as(out))
    for grad in (grad_input, grad_offset, grad_mask, grad_weight):
        assert torch.count_nonzero(grad) == 0
    assert torch.count_nonzero(grad_bias) == case.bias.numel()


def test_empty_batch():
    case = random_dcn_case(0, batch=0)
    out, grad_input, grad_offset, grad_mask, grad_weight, grad_bias = forward_and_grads(reference, case)
    assert out.shape == (0, 6, 7, 9)
    assert grad_input.shape == case.input.shape and grad_offset.shape == case.offset.shape
    assert torch.count_nonzero(grad_weight) == 0 and torch.count_nonzero(grad_bias) == 0
