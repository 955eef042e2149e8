"""FPN neck: mmdet's structure and options, checked against hand computations.

(Its state_dict keys against the released BEVFormer / DETR3D checkpoints: tests/test_backbone.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detr2d.layers.fpn import FPNNeck


def conv_by_hand(x: torch.Tensor, conv: torch.nn.Conv2d, stride: int = 1) -> torch.Tensor:
    """A 1x1 or zero-padded 3x3 conv as a sum of shifted channel mixes, then strided by subsampling."""
    k = conv.kernel_size[0]
    padded = F.pad(x, [k // 2] * 4)
    h, w = x.shape[-2:]
    out = conv.bias[None, :, None, None].expand(x.shape[0], -1, h, w).clone()
    for i in range(k):
        for j in range(k):
            out += torch.einsum("oc,nchw->nohw", conv.weight[:, :, i, j], padded[..., i : i + h, j : j + w])
    return out[..., ::stride, ::stride]


def nearest_by_hand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling: output cell i reads input floor(i * in / out)."""
    rows = [i * x.shape[-2] // size[0] for i in range(size[0])]
    cols = [j * x.shape[-1] // size[1] for j in range(size[1])]
    return x[..., rows, :][..., cols]


def randomize(neck: FPNNeck) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in neck.parameters():
            p.normal_(0.0, 0.5)


def test_one_level_with_extra_levels_by_hand() -> None:
    """1 input, 3 outputs, on_output: out0 = fpn(lat(x)); out1 = extra0(out0) without ReLU (mmdet
    applies relu_before_extra_convs from the second extra conv on); out2 = extra1(relu(out1))."""
    neck = FPNNeck([6], 4, num_outs=3, add_extra_convs="on_output", relu_before_extra_convs=True)
    randomize(neck)
    x = torch.randn(2, 6, 7, 9)
    with torch.no_grad():
        outs = neck([x])
        lateral = conv_by_hand(x, neck.lateral_convs[0].conv)
        out0 = conv_by_hand(lateral, neck.fpn_convs[0].conv)
        out1 = conv_by_hand(out0, neck.fpn_convs[1].conv, stride=2)
        out2 = conv_by_hand(out1.relu(), neck.fpn_convs[2].conv, stride=2)
    assert (out0 < 0).any() and (out1 < 0).any()  # the ReLU placement matters on these inputs
    assert [tuple(o.shape) for o in outs] == [(2, 4, 7, 9), (2, 4, 4, 5), (2, 4, 2, 3)]
    for got, expected in zip(outs, (out0, out1, out2), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_top_down_and_on_input_by_hand() -> None:
    """Two inputs (odd sizes): laterals summed top-down with nearest upsampling; the on_input extra
    conv reads the last input level (its input channels)."""
    neck = FPNNeck([3, 5], 4, num_outs=3, add_extra_convs="on_input")
    randomize(neck)
    assert neck.fpn_convs[2].conv.weight.shape == (4, 5, 3, 3)
    fine, coarse = torch.randn(1, 3, 5, 7), torch.randn(1, 5, 3, 4)
    with torch.no_grad():
        outs = neck([fine, coarse])
        top = conv_by_hand(coarse, neck.lateral_convs[1].conv)
        merged = conv_by_hand(fine, neck.lateral_convs[0].conv) + nearest_by_hand(top, (5, 7))
        expected = [
            conv_by_hand(merged, neck.fpn_convs[0].conv),
            conv_by_hand(top, neck.fpn_convs[1].conv),
            conv_by_hand(coarse, neck.fpn_convs[2].conv, stride=2),
        ]
    for got, want in zip(outs, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_start_level_and_pooled_extra_levels() -> None:
    """start_level skips the first inputs; add_extra_convs=False subsamples the last output by 2."""
    neck = FPNNeck([2, 3, 5], 4, num_outs=4, start_level=1, add_extra_convs=False)
    assert [c.conv.in_channels for c in neck.lateral_convs] == [3, 5] and len(neck.fpn_convs) == 2
    feats = [torch.randn(1, 2, 16, 16), torch.randn(1, 3, 8, 8), torch.randn(1, 5, 4, 4)]
    with torch.no_grad():
        outs = neck(feats)
        without_first = FPNNeck([3, 5], 4, num_outs=2)
        without_first.load_state_dict(neck.state_dict())
        expected = without_first(feats[1:])
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    torch.testing.assert_close(outs[:2], expected)
    torch.testing.assert_close(outs[2], outs[1][..., ::2, ::2])
    torch.testing.assert_close(outs[3], outs[2][..., ::2, ::2])


def test_defaults_and_true_means_on_input() -> None:
    neck = FPNNeck([8, 16], 4, num_outs=3)
    assert (neck.add_extra_convs, neck.relu_before_extra_convs, neck.start_level) == ("on_output", True, 0)
    assert FPNNeck([8, 16], 4, num_outs=3, add_extra_convs=True).add_extra_convs == "on_input"
    assert FPNNeck([8, 16], 4).num_outs == 2
    for conv in (neck.lateral_convs[0].conv, neck.fpn_convs[2].conv):
        assert torch.count_nonzero(conv.bias) == 0 and conv.weight.abs().amax() > 0


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"num_outs \(1\) must be >= the number of used input levels \(2\)"):
        FPNNeck([8, 16], 4, num_outs=1)
    with pytest.raises(ValueError, match="add_extra_convs must be one of"):
        FPNNeck([8], 4, num_outs=2, add_extra_convs="on_lateral")
    with pytest.raises(ValueError, match=r"start_level \(2\) must index one of the 2 input levels"):
        FPNNeck([8, 16], 4, start_level=2)
    neck = FPNNeck([8, 16], 4)
    with pytest.raises(ValueError, match="expected 2 feature levels, got 1"):
        neck([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"feature level 1 must be \(N, 16, H, W\), got \(1, 8, 2, 2\)"):
        neck([torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])
