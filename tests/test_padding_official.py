"""``padding="official"`` reproduces the original Deformable DETR's forward on padded batches.

The reference below is the original's front end written out (models/deformable_detr.py and
models/backbone.py of fundamentalvision/Deformable-DETR): the ResNet runs on the padded batch, every
level's mask is ``F.interpolate(mask[None].float(), size).to(torch.bool)[0]``, the input projections
are a plain Conv2d + GroupNorm over the whole padded map, the extra level convolves the raw last
backbone map (then the previous level), and the transformer and heads take those maps and masks.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from detr2d_helpers import TINY as TINY_BASE
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)
from torch import Tensor

from detr2d import build_model
from detr2d.layers.box_ops import apply_box_delta
from detr2d.layers.padding import PaddingMasks, level_mask, nearest_mask
from detr2d.transformer import TransformerOutput

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
    if model.two_stage:
        out = original_two_stage_transformer(model.transformer, srcs, masks, pos)
    else:
        out = model.transformer(srcs, masks, pos, model.query_embed.weight)
    last = out.hs.shape[0] - 1
    reference = out.init_reference if last == 0 else out.inter_references[last - 1]
    return {
        "pred_logits": model.class_embed[last](out.hs[last]),
        "pred_boxes": apply_box_delta(model.bbox_embed[last](out.hs[last]), reference),
    }


def original_proposal_pos_embed(proposals: Tensor, num_pos_feats: int) -> Tensor:
    """``get_proposal_pos_embed`` (128 features for 256 channels: half the width)."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_pos_feats)
    pos = proposals.sigmoid()[:, :, :, None] * (2 * math.pi) / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)


def original_two_stage_transformer(transformer, srcs: list[Tensor], masks: list[Tensor], pos: list[Tensor]):
    """The original's ``DeformableTransformer.forward`` with ``two_stage`` (models/deformable_transformer.py):
    ``gen_encoder_output_proposals`` fills padded / invalid cells' memory with 0 and their proposals with
    inf, then ``topk(enc_outputs_class[..., 0])`` ranks every cell, those included. The encoder and the
    decoder are the model's (their padding is covered by the other variants)."""
    flat = transformer.flatten_levels(srcs, masks, pos)
    memory = transformer.encoder(
        flat.src,
        flat.spatial_shapes,
        flat.level_start_index,
        flat.valid_ratios,
        flat.pos,
        flat.mask,
        flat.level_sizes(),
    )
    n, _, c = memory.shape
    proposals, cur = [], 0
    for lvl, (h, w) in enumerate(flat.level_sizes()):
        mask_flatten_ = flat.mask[:, cur : cur + h * w].view(n, h, w, 1)
        valid_h = torch.sum(~mask_flatten_[:, :, 0, 0], 1)
        valid_w = torch.sum(~mask_flatten_[:, 0, :, 0], 1)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, h - 1, h, dtype=torch.float32),
            torch.linspace(0, w - 1, w, dtype=torch.float32),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
        scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(n, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
        wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
        proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
        cur += h * w
    output_proposals = torch.cat(proposals, 1)
    output_proposals_valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
    output_proposals = torch.log(output_proposals / (1 - output_proposals))
    output_proposals = output_proposals.masked_fill(flat.mask.unsqueeze(-1), float("inf"))
    output_proposals = output_proposals.masked_fill(~output_proposals_valid, float("inf"))
    output_memory = memory.masked_fill(flat.mask.unsqueeze(-1), 0.0)
    output_memory = output_memory.masked_fill(~output_proposals_valid, 0.0)
    output_memory = transformer.enc_output_norm(transformer.enc_output(output_memory))

    decoder = transformer.decoder
    enc_outputs_class = decoder.class_embed[decoder.num_layers](output_memory)
    enc_outputs_coord_unact = decoder.bbox_embed[decoder.num_layers](output_memory) + output_proposals
    topk_proposals = torch.topk(enc_outputs_class[..., 0], transformer.two_stage_num_proposals, dim=1)[1]
    topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_proposals.unsqueeze(-1).repeat(1, 1, 4))
    reference_points = topk_coords_unact.sigmoid()
    pos_trans_out = transformer.pos_trans_norm(
        transformer.pos_trans(original_proposal_pos_embed(topk_coords_unact, c // 2))
    )
    query_embed, tgt = torch.split(pos_trans_out, c, dim=2)
    hs, inter_references = decoder(
        tgt,
        reference_points,
        memory,
        flat.spatial_shapes,
        flat.level_start_index,
        flat.valid_ratios,
        query_embed,
        flat.mask,
    )
    return TransformerOutput(
        hs, reference_points, inter_references, enc_outputs_class, enc_outputs_coord_unact
    )


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
