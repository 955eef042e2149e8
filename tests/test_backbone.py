"""ResNet options of the 3D detectors' image backbones: mmdet names, caffe style, DCN stages, norm_eval.

The key lists in ``tests/reference_keys/`` are the ``img_backbone.*`` / ``img_neck.*`` lines of the
released BEVFormer tiny / small / base checkpoints (DETR3D's are identical to base's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ops
from detr2d.layers.fpn import FPNNeck
from detr2d.layers.resnet import LAYER_NAMES, Bottleneck, ResNetBackbone, load_pretrained

KEYS = Path(__file__).resolve().parent / "reference_keys"
DCN_34 = (False, False, True, True)
ALL_LAYERS = LAYER_NAMES


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference_dcn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deformable convs run the op's pure-PyTorch backend (its kernels are tested in the op's tests)."""
    monkeypatch.setenv("DEFORMBEV_DCN_BACKEND", "reference")


def read_keys(name: str) -> list[tuple[str, list[int], str]]:
    """(key, shape, dtype) rows of a reference key file, in file order."""
    rows = []
    for line in (KEYS / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


def image_stage_state(backbone: ResNetBackbone, neck: FPNNeck) -> dict[str, torch.Tensor]:
    """The state of backbone + neck under the released checkpoints' prefixes."""
    state = {f"img_backbone.{k}": v for k, v in backbone.body.state_dict().items()}
    return state | {f"img_neck.{k}": v for k, v in neck.state_dict().items()}


# The published img_backbone / img_neck settings (BEVFormer projects/configs/bevformer/*.py, DETR3D
# detr3d_res101_gridmask.py), with norm="bn" for mmdet's BatchNorm2d names.
PUBLISHED = {
    "bevformer_tiny": (
        dict(depth=50, return_layers=("layer4",), style="pytorch"),
        dict(in_channels=[2048], num_outs=1),
        "bevformer_tiny_img_keys.txt",
    ),
    "bevformer_small": (
        dict(depth=101, return_layers=("layer4",), style="caffe", stage_with_dcn=DCN_34),
        dict(in_channels=[2048], num_outs=1),
        "bevformer_small_img_keys.txt",
    ),
    "bevformer_base": (
        dict(depth=101, return_layers=("layer2", "layer3", "layer4"), style="caffe", stage_with_dcn=DCN_34),
        dict(in_channels=[512, 1024, 2048], num_outs=4),
        "bevformer_base_img_keys.txt",
    ),
    "detr3d": (
        dict(depth=101, return_layers=ALL_LAYERS, style="caffe", stage_with_dcn=DCN_34),
        dict(in_channels=[256, 512, 1024, 2048], start_level=1, num_outs=4),
        "bevformer_base_img_keys.txt",
    ),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_image_stage_keys_equal_release(name: str) -> None:
    """norm="bn": keys (in order), shapes and dtypes equal the released img_backbone / img_neck."""
    backbone_args, neck_args, keys_file = PUBLISHED[name]
    backbone = ResNetBackbone(**backbone_args, norm="bn", norm_eval=True)
    state = image_stage_state(backbone, FPNNeck(**neck_args, out_channels=256))
    rows = read_keys(keys_file)
    assert list(state) == [key for key, _, _ in rows]
    for key, shape, dtype in rows:
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == dtype, key


def test_release_checkpoint_loads_into_frozen_bn() -> None:
    """Frozen batch norm (same numerics as mmdet's BN with requires_grad=False + norm_eval): the keys
    are the release's without num_batches_tracked, and a release-shaped checkpoint fills every entry."""
    backbone_args, _, keys_file = PUBLISHED["bevformer_small"]
    backbone = ResNetBackbone(**backbone_args)
    rows = [r for r in read_keys(keys_file) if r[0].startswith("img_backbone.")]
    assert [f"img_backbone.{k}" for k in backbone.body.state_dict()] == [
        k for k, _, _ in rows if not k.endswith("num_batches_tracked")
    ]
    state = {
        k: torch.tensor(0.5).expand(shape) if dtype == "float32" else torch.tensor(7)
        for k, shape, dtype in read_keys(keys_file)
    }
    report = load_pretrained(backbone, {"meta": {"epoch": 24}, "state_dict": state})
    assert report.prefix == "img_backbone." and report.missing == () and report.unexpected == ()
    assert report.loaded == tuple(backbone.body.state_dict())
    ignored = set(report.ignored)
    assert {k for k in state if k.startswith("img_neck.") or k.endswith("num_batches_tracked")} == ignored
    for key, value in backbone.body.state_dict().items():
        assert value.flatten()[0] == 0.5 and value.flatten()[-1] == 0.5, key


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_bottleneck_style_places_the_stride(style: str) -> None:
    """caffe: the first 1x1 conv strides (out = block path on x[::2, ::2]); pytorch: the 3x3 conv."""
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    block = Bottleneck(16, 8, 2, 1, downsample, "bn", style=style).eval()
    first, second = (2, 1) if style == "caffe" else (1, 2)
    assert block.conv1.stride == (first, first) and block.conv2.stride == (second, second)
    x = torch.randn(2, 16, 9, 7)
    with torch.no_grad():
        for bn in (block.bn1, block.bn2, block.bn3, downsample[1]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        out = block(x)
        y = F.relu(block.bn1(F.conv2d(x, block.conv1.weight, stride=first)))
        y = F.relu(block.bn2(F.conv2d(y, block.conv2.weight, stride=second, padding=1)))
        expected = F.relu(block.bn3(F.conv2d(y, block.conv3.weight)) + downsample(x))
    assert out.shape == (2, 32, 5, 4)
    torch.testing.assert_close(out, expected)


def test_dcn_stages(reference_dcn: None) -> None:
    """conv2 of every block of layer3/4 is a modulated deformable conv with zero offsets; with the
    plain ResNet's weights and saturated masks it computes the plain ResNet's features."""
    torch.manual_seed(0)
    plain = ResNetBackbone(50, ALL_LAYERS, style="caffe").eval()
    dcn = ResNetBackbone(50, ALL_LAYERS, style="caffe", stage_with_dcn=DCN_34).eval()
    for name in LAYER_NAMES:
        for block in getattr(dcn.body, name):
            deformable = name in ("layer3", "layer4")
            assert isinstance(block.conv2, ops.ModulatedDeformConv2d) == deformable, name
            assert isinstance(block.conv1, nn.Conv2d) and isinstance(block.conv3, nn.Conv2d)
            if deformable:
                assert torch.count_nonzero(block.conv2.conv_offset.weight) == 0
                assert block.conv2.bias is None and block.conv2.conv_offset.weight.shape[0] == 27
    report = load_pretrained(dcn, plain.body.state_dict())
    assert set(report.missing) == {k for k in dcn.body.state_dict() if ".conv_offset." in k}
    assert dcn.body.layer3[0].conv2.stride == (1, 1)  # caffe: layer3.0 strides in conv1
    with torch.no_grad():
        for m in dcn.body.modules():
            if isinstance(m, ops.ModulatedDeformConv2d):
                m.conv_offset.bias[18:] = 30.0  # mask = sigmoid(30) = 1 - 1e-13; offsets stay zero
        x = torch.randn(1, 3, 64, 96)
        for a, b in zip(dcn(x), plain(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dcn_caffe_backbone_exact_padding(reference_dcn: None) -> None:
    """With random offsets and masks, a padded image's features still equal the image's own."""
    torch.manual_seed(0)
    backbone = ResNetBackbone(50, style="caffe", stage_with_dcn=DCN_34).eval()
    with torch.no_grad():
        for m in backbone.body.modules():
            if isinstance(m, ops.ModulatedDeformConv2d):
                m.conv_offset.weight.normal_(0.0, 0.02)
                m.conv_offset.bias.normal_(0.0, 1.0)
    g = torch.Generator().manual_seed(1)
    big, small = torch.randn(3, 64, 64, generator=g), torch.randn(3, 37, 50, generator=g)
    batch = torch.zeros(2, 3, 64, 64)
    batch[0], batch[1, :, :37, :50] = big, small
    mask = torch.ones(2, 64, 64, dtype=torch.bool)
    mask[0], mask[1, :37, :50] = False, False
    with torch.no_grad():
        padded, alone = backbone(batch, mask), backbone(small[None])
    for f, a in zip(padded, alone, strict=True):
        assert f[1, :, : a.shape[2], : a.shape[3]].abs().amax() > 0
        torch.testing.assert_close(f[1, :, : a.shape[2], : a.shape[3]], a[0], atol=1e-4, rtol=1e-4)
        assert f[1, :, a.shape[2] :].abs().sum() == 0 and f[1, :, :, a.shape[3] :].abs().sum() == 0


def test_norm_eval_keeps_statistics() -> None:
    """norm_eval: in training mode every BatchNorm2d normalizes with its running statistics, which
    do not move, and its affine parameters get no gradient (mmdet's ``requires_grad=False``), while the
    convolutions of trainable stages learn."""
    torch.manual_seed(0)
    backbone = ResNetBackbone(18, ("layer4",), norm="bn", norm_eval=True, trainable_layers=3).train()
    norms = [m for m in backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone.training and norms and not any(m.training for m in norms)
    before = {k: v.clone() for k, v in backbone.body.state_dict().items() if "running" in k}
    backbone(torch.randn(2, 3, 64, 64))[0].square().mean().backward()
    after = backbone.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert backbone.body.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for m in norms for p in m.parameters())
    assert backbone.body.layer1[0].conv1.weight.grad is None  # frozen stage
    moving = ResNetBackbone(18, ("layer4",), norm="bn", trainable_layers=3).train()
    assert moving.body.layer4[0].bn1.training


def test_option_errors() -> None:
    with pytest.raises(ValueError, match="backbone style must be one of"):
        ResNetBackbone(50, style="mxnet")
    with pytest.raises(ValueError, match="stage_with_dcn must be four bools"):
        ResNetBackbone(50, stage_with_dcn=(True, False))
    with pytest.raises(ValueError, match=r"stage_with_dcn needs bottleneck blocks \(ResNet-50/101\)"):
        ResNetBackbone(18, stage_with_dcn=DCN_34)
