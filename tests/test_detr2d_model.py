"""detr2d model: output shapes of every variant, exact padding, determinism, backends, building blocks."""

from __future__ import annotations

import math

import pytest
import torch
from detr2d_helpers import TINY as TINY_BASE
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)
from torch import nn

import ops
from detr2d import VARIANTS, PositionEmbeddingSine, ResNetBackbone, build_model
from detr2d.builder import family
from detr2d.encoder import encoder_reference_points
from detr2d.layers.padding import MaskedGroupNorm, valid_ratios
from detr2d.transformer import DeformableTransformer, FlatLevels

TINY = {**TINY_BASE, "num_classes": 5}
SIZES = [(70, 90), (100, 61)]  # one image wider, one taller: both get padding


def padded_batch(
    sizes: list[tuple[int, int]], seed: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random images and their zero-padded batch with mask (True on padding)."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = torch.zeros(len(sizes), 3, height, width)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
        mask[i, : img.shape[1], : img.shape[2]] = False
    return images, batch, mask


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    out = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        out[name] = build_model(name, **TINY).eval()
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_outputs_and_padding_exact(name: str, models: dict) -> None:
    """Shapes of every output; each image of a padded batch == that image alone (<= 1e-4), for every
    Deformable DETR and DETR variant."""
    model = models[name]
    images, batch, mask = padded_batch(SIZES)
    with torch.no_grad():
        out = model(batch, mask)
        alone = [model(img[None]) for img in images]
    q, c = TINY["num_queries"], TINY["num_classes"] + family(name).extra_logits  # DETR: + "no object"
    assert out["pred_logits"].shape == (2, q, c)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == TINY["decoder_layers"] - 1
    assert out["aux_outputs"][0]["pred_boxes"].shape == (2, q, 4)
    assert ("enc_outputs" in out) == name.endswith("two_stage")
    if "enc_outputs" in out:
        s = out["enc_outputs"]["pred_logits"].shape[1]
        assert out["enc_outputs"]["pred_logits"].shape == (2, s, c)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, s, 4)
    for i, single in enumerate(alone):
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(out[key][i], single[key][0], atol=1e-4, rtol=0)
        for layer, aux in enumerate(out["aux_outputs"]):
            torch.testing.assert_close(
                aux["pred_boxes"][i], single["aux_outputs"][layer]["pred_boxes"][0], atol=1e-4, rtol=0
            )


def test_eval_is_deterministic(models: dict) -> None:
    model = models["deformable_detr_two_stage"]
    _, batch, mask = padded_batch(SIZES, seed=1)
    with torch.no_grad():
        first, second = model(batch, mask), model(batch, mask)
    assert torch.equal(first["pred_logits"], second["pred_logits"])
    assert torch.equal(first["pred_boxes"], second["pred_boxes"])


def test_gradients_reach_trainable_parameters() -> None:
    """Training mode: every trainable parameter gets a gradient; the stem and layer1 are frozen."""
    torch.manual_seed(0)
    model = build_model("deformable_detr_refine", **TINY).train()
    _, batch, mask = padded_batch(SIZES)
    out = model(batch, mask)
    layers = [out, *out["aux_outputs"]]
    sum(o["pred_logits"].sum() + o["pred_boxes"].sum() for o in layers).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.0.body.conv1", "backbone.0.body.layer1")) for n in frozen)


def available_backends() -> tuple[str, ...]:
    return getattr(ops, "available_backends", lambda: ("reference",))()


@pytest.mark.parametrize("name", ["deformable_detr", "deformable_detr_two_stage"])
def test_backend_parity_cpu_vs_reference(name: str) -> None:
    if "cpu" not in available_backends():
        pytest.skip("the native 'cpu' backend of ops.ms_deform_attn is not available in this build")
    torch.manual_seed(0)
    reference = build_model(name, backend="reference", **TINY).eval()
    native = build_model(name, backend="cpu", **TINY).eval()
    native.load_state_dict(reference.state_dict())
    _, batch, mask = padded_batch(SIZES, seed=2)
    with torch.no_grad():
        a, b = reference(batch, mask), native(batch, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=0)


def test_bad_inputs_raise_value_error(models: dict) -> None:
    model = models["deformable_detr"]
    _, batch, mask = padded_batch(SIZES)
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        model(batch, mask[:, :-1])
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model(batch, mask.float())
    with pytest.raises(ValueError, match=r"images must be a \(B, 3, H, W\)"):
        model(batch[:, :2], mask)
    full = mask.clone()
    full[1] = True
    with pytest.raises(ValueError, match="every pixel of an image as padding"):
        model(batch, full)


def test_builder_validates_names_and_overrides() -> None:
    with pytest.raises(ValueError, match="unknown model 'detr'"):
        build_model("detr")
    with pytest.raises(ValueError, match=r"unknown overrides \['hiden_dim'\]"):
        build_model("deformable_detr", hiden_dim=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("deformable_detr", embed_dims=48)
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_model("deformable_detr", backbone="resnet152")
    with pytest.raises(ValueError, match="two_stage requires with_box_refine"):
        build_model("deformable_detr", two_stage=True)
    with pytest.raises(ValueError, match="ResNet depth must be one of"):
        ResNetBackbone(20)
    with pytest.raises(ValueError, match="increasing subset"):
        ResNetBackbone(18, ("layer3", "layer2"))


@pytest.mark.parametrize(
    ("depth", "dilation", "strides", "channels"),
    [(18, False, [8, 16, 32], [128, 256, 512]), (50, True, [8, 16, 16], [512, 1024, 2048])],
)
def test_backbone_levels(depth: int, dilation: bool, strides: list, channels: list) -> None:
    """Strides/channels per level; a padded image's features equal the image's own features."""
    torch.manual_seed(0)
    backbone = ResNetBackbone(depth, dilation=dilation).eval()
    assert backbone.strides == strides and backbone.num_channels == channels
    images, batch, mask = padded_batch([(64, 64), (37, 50)])
    with torch.no_grad():
        padded = backbone(batch, mask)
        alone = backbone(images[1][None])
    for f, a, s, c in zip(padded, alone, strides, channels, strict=True):
        assert f.shape == (2, c, math.ceil(64 / s), math.ceil(64 / s))
        assert a.shape == (1, c, math.ceil(37 / s), math.ceil(50 / s))
        torch.testing.assert_close(f[1, :, : a.shape[2], : a.shape[3]], a[0], atol=1e-4, rtol=1e-4)
        assert f[1, :, a.shape[2] :].abs().sum() == 0 and f[1, :, :, a.shape[3] :].abs().sum() == 0


@pytest.mark.parametrize(
    ("trainable_layers", "train_backbone", "trainable_stages"),
    [
        (3, True, {"layer2", "layer3", "layer4"}),
        (5, True, {"stem", "layer1", "layer2", "layer3", "layer4"}),
        (1, True, {"layer4"}),
        (5, False, set()),
    ],
)
def test_backbone_trainable_layers(
    trainable_layers: int, train_backbone: bool, trainable_stages: set
) -> None:
    """The last ``trainable_layers`` stages learn (the stem counts last); train_backbone=False freezes all."""
    backbone = ResNetBackbone(18, norm="bn", trainable_layers=trainable_layers, train_backbone=train_backbone)
    stages = {}
    for name, p in backbone.body.named_parameters():
        stages.setdefault(name.split(".")[0] if name.startswith("layer") else "stem", set()).add(
            p.requires_grad
        )
    assert {s for s, flags in stages.items() if flags == {True}} == trainable_stages
    assert all(len(flags) == 1 for flags in stages.values())


def test_trainable_batch_norm_backbone() -> None:
    """norm="bn": torchvision's BatchNorm2d keys (plus num_batches_tracked); batch statistics move in
    training only in trainable stages; eval uses the running statistics (a padded image == alone)."""
    torch.manual_seed(0)
    frozen_keys = set(ResNetBackbone(18).state_dict())
    backbone = ResNetBackbone(18, norm="bn", trainable_layers=3)
    keys = set(backbone.state_dict())
    assert {k for k in keys if not k.endswith("num_batches_tracked")} == frozen_keys
    assert isinstance(backbone.body.layer2[0].bn1, nn.BatchNorm2d)
    backbone.train()
    assert (
        backbone.body.layer2.training and not backbone.body.layer1.training and not backbone.body.bn1.training
    )
    before = {k: v.clone() for k, v in backbone.body.state_dict().items() if "running_mean" in k}
    backbone(torch.randn(2, 3, 64, 64))
    after = backbone.body.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert moved == {"layer2", "layer3", "layer4"}
    backbone.eval()
    images, batch, mask = padded_batch([(64, 64), (37, 50)])
    with torch.no_grad():
        padded, alone = backbone(batch, mask), backbone(images[1][None])
    for f, a in zip(padded, alone, strict=True):
        torch.testing.assert_close(f[1, :, : a.shape[2], : a.shape[3]], a[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="backbone norm must be one of"):
        ResNetBackbone(18, norm="gn")
    with pytest.raises(ValueError, match="trainable_layers must be an int in 0..5"):
        ResNetBackbone(18, trainable_layers=6)


def test_position_embedding_values() -> None:
    """(y + 0.5) / valid * 2 pi per axis; feature 2i = sin(v / T^(2i/F)), 2i + 1 = cos; y first."""
    mask = torch.ones(1, 3, 4, dtype=torch.bool)
    mask[0, :2, :3] = False  # valid 2 x 3
    pos = PositionEmbeddingSine(num_pos_feats=4)(mask)
    assert pos.shape == (1, 8, 3, 4)
    y, x = 1, 2
    vy, vx = (y + 0.5) / 2 * 2 * math.pi, (x + 0.5) / 3 * 2 * math.pi
    expected = [math.sin(vy), math.cos(vy), math.sin(vy / 100), math.cos(vy / 100)]
    expected += [math.sin(vx), math.cos(vx), math.sin(vx / 100), math.cos(vx / 100)]
    torch.testing.assert_close(pos[0, :, y, x], torch.tensor(expected), atol=1e-5, rtol=0)


def test_masked_group_norm_equals_group_norm_on_valid_region() -> None:
    torch.manual_seed(0)
    norm = MaskedGroupNorm(4, 8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(1, 8, 5, 7)
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[0, :3, :4] = False
    out = norm(x, mask)
    expected = nn.functional.group_norm(x[:, :, :3, :4], 4, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out[:, :, :3, :4], expected, atol=1e-5, rtol=1e-5)
    assert out[:, :, 3:].abs().sum() == 0 and out[:, :, :, 4:].abs().sum() == 0
    torch.testing.assert_close(
        norm(x, None), nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    )


def test_valid_ratios_and_encoder_reference_points() -> None:
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :4] = False  # valid 2 rows x 4 columns
    ratios = valid_ratios(mask)
    torch.testing.assert_close(ratios, torch.tensor([[1.0, 0.5]]))
    refs = encoder_reference_points(torch.tensor([[4, 4]]), ratios[:, None])
    assert refs.shape == (1, 16, 1, 2)
    # cell (row 1, col 2): ((2 + 0.5) / 4, (1 + 0.5) / 2) in the valid region, times the ratios
    torch.testing.assert_close(refs[0, 1 * 4 + 2, 0], torch.tensor([2.5 / 4, 1.5 / 2 * 0.5]))


def test_two_stage_proposals() -> None:
    """Cell centres of the valid region, size 0.05 * 2^level, logit space, inf where padded/invalid."""
    transformer = DeformableTransformer(embed_dims=32, num_heads=4, num_levels=2, two_stage=True)
    shapes = torch.tensor([[4, 4], [2, 2]])
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :, 2:] = True  # level 0: valid 4 rows x 2 columns; level 1: 2 x 1
    mask1 = torch.tensor([[[False, True], [False, True]]])
    flat_mask = torch.cat([mask.flatten(1), mask1.flatten(1)], 1)
    flat = FlatLevels(
        src=torch.zeros(1, 20, 32),
        mask=flat_mask,
        pos=torch.zeros(1, 20, 32),
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 16]),
        valid_ratios=torch.stack([valid_ratios(mask), valid_ratios(mask1)], 1),
    )
    _, proposals, valid = transformer.encoder_proposals(torch.randn(1, 20, 32), flat)
    assert valid.tolist() == [(~flat_mask).tolist()[0]]
    expected = torch.tensor([(1 + 0.5) / 2, (2 + 0.5) / 4, 0.05, 0.05])  # level 0, row 2, col 1
    torch.testing.assert_close(proposals[0, 2 * 4 + 1].sigmoid(), expected)
    torch.testing.assert_close(proposals[0, 16].sigmoid(), torch.tensor([0.5, 0.25, 0.1, 0.1]))
    assert torch.isinf(proposals[0, 2]).all() and torch.isinf(proposals[0, 17]).all()
