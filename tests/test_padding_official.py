"""``padding="official"`` reproduces the original Deformable DETR's forward on padded batches.

The reference below is the original's front end written out (models/deformable_detr.py and
models/backbone.py of fundamentalvision/Deformable-DETR): the ResNet runs on the padded batch, every
level's mask is ``F.interpolate(mask[None].float(), size).to(torch.bool)[0]``, the input projections
are a plain Conv2d + GroupNorm over the whole padded map, the extra level convolves the raw last
backbone map (then the previous level), and the transformer and heads take those maps and masks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detr2d_helpers import TINY as TINY_BASE
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)
from torch import Tensor

from detr2d import build_model
from detr2d.layers.box_ops import apply_box_delta
from detr2d.layers.padding import PaddingMasks, level_mask, nearest_mask

TINY = {**TINY_BASE, "num_classes": 5}
SIZES = [(70, 90), (100, 61)]  # padded to 100 x 90: neither a multiple of the strides 8..64
VARIANTS = ["deformable_detr", "deformable_detr_single_scale", "deformable_detr_two_stage"]


def padded_batch(sizes: list[tuple[int, int]], seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = torch.zeros(len(sizes), 3, height, width)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        batch[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = False
    return batch, mask


def original_forward(model: torch.nn.Module, images: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The original's forward (last decoder layer) with the model's weights."""
    features = model.backbone[0](images)  # no mask: the padded batch as it is
    srcs, masks = [], []
    for lvl, proj in enumerate(model.input_proj):
        if lvl < len(features):
            x = features[lvl]
        else:
            x = features[-1] if lvl == len(features) else srcs[-1]
        y = proj[0](x)
        srcs.append(F.group_norm(y, 32, proj[1].weight, proj[1].bias, proj[1].eps))
        masks.append(F.interpolate(mask[None].float(), size=y.shape[-2:]).to(torch.bool)[0])
    pos = [model.backbone[1](m) for m in masks]
    query_embed = None if model.two_stage else model.query_embed.weight
    out = model.transformer(srcs, masks, pos, query_embed)
    last = out.hs.shape[0] - 1
    reference = out.init_reference if last == 0 else out.inter_references[last - 1]
    return {
        "pred_logits": model.class_embed[last](out.hs[last]),
        "pred_boxes": apply_box_delta(model.bbox_embed[last](out.hs[last]), reference),
    }


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, torch.nn.Module]]:
    out = {}
    for name in VARIANTS:
        torch.manual_seed(0)
        official = build_model(name, padding="official", **TINY).eval()
        for head in {id(h): h for h in official.bbox_embed}.values():  # at init boxes ignore the image
            torch.nn.init.normal_(head.layers[-1].weight, std=0.05)
        exact = build_model(name, **TINY).eval()
        exact.load_state_dict(official.state_dict())
        out[name] = {"official": official, "exact": exact}
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_official_padding_equals_the_original_forward(name: str, models: dict) -> None:
    batch, mask = padded_batch(SIZES)
    with torch.no_grad():
        ours = models[name]["official"](batch, mask)
        reference = original_forward(models[name]["official"], batch, mask)
        exact = models[name]["exact"](batch, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-5, atol=1e-5)
        # padding leaks into both images in the original; exact padding removes it
        for i in range(len(SIZES)):
            assert (ours[key][i] - exact[key][i]).abs().max() > 1e-3, (key, i)


@pytest.mark.parametrize("name", VARIANTS)
def test_modes_agree_without_padding(name: str, models: dict) -> None:
    batch, mask = padded_batch([(70, 90), (70, 90)], seed=1)
    assert not mask.any()
    with torch.no_grad():
        official = models[name]["official"](batch, mask)
        exact = models[name]["exact"](batch, mask)
        reference = original_forward(models[name]["official"], batch, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(official[key], exact[key], rtol=0, atol=0)
        torch.testing.assert_close(official[key], reference[key], rtol=1e-5, atol=1e-5)


def test_level_masks_differ_between_modes_when_padding_is_not_a_stride_multiple() -> None:
    """At 100 x 90 padded, nearest interpolation marks other cells than stride subsampling."""
    _, mask = padded_batch(SIZES)
    official, exact = PaddingMasks(mask, "official"), PaddingMasks(mask, "exact")
    for size in [(13, 12), (7, 6), (4, 3)]:  # strides 8, 16, 32
        torch.testing.assert_close(official.at(size), nearest_mask(mask, size))
        torch.testing.assert_close(exact.at(size), level_mask(mask, size))
    assert not torch.equal(official.at((13, 12)), exact.at((13, 12)))
    x = torch.ones(2, 4, 100, 90)
    assert torch.equal(official.zero(x), x) and official.norm_mask((100, 90)) is None
    assert exact.zero(x).sum() == (~mask).sum() * 4 and torch.equal(exact.norm_mask((100, 90)), mask)


def test_unknown_padding_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="padding must be one of"):
        build_model("deformable_detr", padding="same", **TINY)
    with pytest.raises(ValueError, match="padding mode must be one of"):
        PaddingMasks(torch.zeros(1, 4, 4, dtype=torch.bool), "same")
