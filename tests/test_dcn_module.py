"""ModulatedDeformConv2d: mmcv's parameter names, shapes and init, its offset/mask split, torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ops import ModulatedDeformConv2d, deform_conv2d

# mmcv ModulatedDeformConv2dPack(8, 6, 3, stride=2, padding=1, groups=2, deform_groups=2): conv_offset has
# deform_groups * 3 * kh * kw = 54 outputs over all in_channels.
MMCV_SHAPES = {
    "weight": (6, 4, 3, 3),
    "bias": (6,),
    "conv_offset.weight": (54, 8, 3, 3),
    "conv_offset.bias": (54,),
}


def test_parameter_names_and_shapes_equal_mmcv():
    module = ModulatedDeformConv2d(8, 6, 3, stride=2, padding=1, groups=2, deform_groups=2)
    assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == MMCV_SHAPES
    assert [name for name, _ in module.named_parameters()] == list(MMCV_SHAPES)
    without_bias = ModulatedDeformConv2d(8, 6, 3, bias=False)
    assert without_bias.bias is None
    assert set(without_bias.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}


def test_init_as_mmcv():
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(64, 32, (3, 3), padding=1)
    stdv = 1 / math.sqrt(64 * 9)
    assert module.weight.abs().max() <= stdv
    assert abs(module.weight.std().item() - stdv / math.sqrt(3)) < 0.05 * stdv  # uniform(-stdv, stdv)
    for name in ("bias", "conv_offset.weight", "conv_offset.bias"):
        assert torch.count_nonzero(module.get_parameter(name)) == 0, name


def test_at_init_it_is_a_plain_convolution_at_half_mask():
    """Zero offsets and zero mask logits: the mask is sigmoid(0) = 0.5 everywhere."""
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, deform_groups=2)
    torch.nn.init.normal_(module.bias)
    x = torch.randn(2, 4, 9, 11)
    want = F.conv2d(x, module.weight * 0.5, module.bias, stride=2, padding=2, dilation=2, groups=2)
    torch.testing.assert_close(module(x), want, atol=1e-5, rtol=1e-5)


def test_offset_and_mask_split_as_mmcv():
    """mmcv: o1, o2, mask = chunk(conv_offset(x), 3); offset = cat(o1, o2); mask = sigmoid(mask)."""
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(
        4, 5, (3, 2), padding=(1, 0), deform_groups=2, backend="reference"
    ).double()
    torch.nn.init.normal_(module.conv_offset.weight, std=0.3)
    torch.nn.init.normal_(module.conv_offset.bias)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    o1, o2, mask = torch.chunk(module.conv_offset(x), 3, dim=1)
    want = deform_conv2d(
        x,
        torch.cat((o1, o2), dim=1),
        torch.sigmoid(mask),
        module.weight,
        module.bias,
        padding=(1, 0),
        deform_groups=2,
        backend="reference",
    )
    torch.testing.assert_close(module(x), want, atol=1e-12, rtol=0)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"deform_groups \(3\) must divide in_channels \(8\)"):
        ModulatedDeformConv2d(8, 6, 3, deform_groups=3)
    with pytest.raises(ValueError, match=r"groups \(4\) must divide in_channels \(8\) and out_channels"):
        ModulatedDeformConv2d(8, 6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        ModulatedDeformConv2d(8, 6, 0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_compile_fullgraph_equals_eager(backend, native_backends):
    if backend not in native_backends:
        pytest.skip(f"the native {backend} op could not be built on this machine")
    torch.manual_seed(0)
    module = ModulatedDeformConv2d(4, 6, 3, padding=1, deform_groups=2, backend=backend)
    torch.nn.init.normal_(module.conv_offset.weight, std=0.1)
    x = torch.randn(2, 4, 8, 10, requires_grad=True)
    eager = module(x)
    (eager_grad,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(module, fullgraph=True, backend="inductor")
    out = compiled(x)
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(grad, eager_grad, atol=1e-4, rtol=1e-4)
