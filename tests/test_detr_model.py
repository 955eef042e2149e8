"""DETR model: the official state_dict format, the transformer's math, position encoding, padding modes,
post-processing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from detr2d_helpers import TINY as TINY_DEFORMABLE
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)
from test_detr2d_model import padded_batch
from torch import Tensor

from configs import load_config
from detr2d import PositionEmbeddingSine, PostProcess, load_checkpoint, save_model_state
from detr2d.detr import DETR_VARIANTS, build_detr, build_detr_criterion, detr_config
from detr2d.detr_transformer import DETRDecoderLayer, DETREncoderLayer
from detr2d.layers.padding import level_mask, nearest_mask

REFERENCE = Path(__file__).resolve().parent / "reference_keys"  # the official key lists
REFERENCE_FILES = {
    "detr_r50": "detr_keys_r50.txt",
    "detr_r50_dc5": "detr_keys_r50.txt",  # dilation changes no parameter
    "detr_r101": "detr_keys_r101.txt",
    "detr_r101_dc5": "detr_keys_r101.txt",
}
TINY = dict(TINY_DEFORMABLE, num_classes=5)  # the detr2d tests' tiny model, 5 classes
SIZES = [(70, 90), (100, 61)]  # neither side a multiple of 32: both images are padded, unevenly


def read_reference(name: str) -> list[tuple[str, list[int], str]]:
    """(key, shape, dtype) rows of a reference key file, in file order."""
    rows = []
    for line in (REFERENCE / REFERENCE_FILES[name]).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detr("detr_r50", **TINY).eval()


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_state_dict_equals_reference(name: str) -> None:
    """Keys (in order), shapes and dtypes equal the official checkpoint's; DC5 has stride 16; a
    ``{'model': state_dict}`` of the reference shapes loads strictly and sets every tensor."""
    model = build_detr(name)
    rows = read_reference(name)
    state = model.state_dict()
    assert list(state) == [k for k, _, _ in rows]
    for key, shape, dtype in rows:
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == dtype, key
    assert model.backbone.strides == [16 if name.endswith("dc5") else 32]

    released = {key: torch.tensor(0.5).expand(shape) for key, shape, _ in rows}  # no memory per tensor
    assert load_checkpoint(model, {"model": released}) == ([], [])
    for key, value in model.state_dict().items():
        assert value.flatten()[0] == 0.5 and value.flatten()[-1] == 0.5, key


def test_released_layout_round_trip(tiny: torch.nn.Module, tmp_path: Path) -> None:
    """``{'model': state_dict}`` written to disk loads strictly into a differently initialized model,
    which then predicts exactly the same; a missing key is refused."""
    path = tmp_path / "detr.pth"
    save_model_state(tiny, path)
    assert list(torch.load(path, weights_only=True)) == ["model"]
    torch.manual_seed(1)
    other = build_detr("detr_r50", **TINY).eval()
    _, batch, mask = padded_batch(SIZES)
    with torch.no_grad():
        assert not torch.equal(other(batch, mask)["pred_logits"], tiny(batch, mask)["pred_logits"])
        assert load_checkpoint(other, path) == ([], [])
        assert torch.equal(other(batch, mask)["pred_logits"], tiny(batch, mask)["pred_logits"])
    state = dict(tiny.state_dict())
    del state["transformer.decoder.norm.weight"]
    with pytest.raises(ValueError, match="transformer.decoder.norm.weight"):
        load_checkpoint(other, {"model": state})


def test_outputs(tiny: torch.nn.Module) -> None:
    """Shapes; K + 1 logits; boxes in [0, 1]; aux outputs of the first D - 1 layers."""
    _, batch, mask = padded_batch(SIZES)
    with torch.no_grad():
        out = tiny(batch, mask)
    q, k = TINY["num_queries"], TINY["num_classes"]
    assert out["pred_logits"].shape == (2, q, k + 1)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == TINY["decoder_layers"] - 1
    assert out["aux_outputs"][0]["pred_logits"].shape == (2, q, k + 1)
    assert not torch.equal(out["aux_outputs"][0]["pred_boxes"], out["pred_boxes"])


def test_decoder_norm_on_every_layer(tiny: torch.nn.Module) -> None:
    """The decoder's LayerNorm is applied to every layer's output: with weight 2 and bias 3, every
    returned vector has mean 3 and standard deviation 2."""
    transformer = build_detr("detr_r50", **TINY).transformer.eval()
    with torch.no_grad():
        transformer.decoder.norm.weight.fill_(2.0)
        transformer.decoder.norm.bias.fill_(3.0)
        src, pos = torch.randn(2, 64, 3, 4), torch.randn(2, 64, 3, 4)
        hs = transformer(src, None, torch.randn(7, 64), pos)
    assert hs.shape == (TINY["decoder_layers"], 2, 7, 64)
    torch.testing.assert_close(hs.mean(-1), torch.full(hs.shape[:-1], 3.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(hs.std(-1, unbiased=False), torch.full(hs.shape[:-1], 2.0), atol=1e-3, rtol=0)


def reference_attention(
    attn: torch.nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> Tensor:
    """Multi-head attention written out from the packed weights: (B, L, C), (B, S, C) x 2 -> (B, L, C)."""
    c, h = q.shape[-1], attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(c)
    bq, bk, bv = attn.in_proj_bias.split(c)

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(-1, (h, c // h)).transpose(1, 2)  # (B, h, N, c / h)

    logits = heads(q @ wq.T + bq) @ heads(k @ wk.T + bk).transpose(-1, -2) / math.sqrt(c // h)
    if mask is not None:
        logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ heads(v @ wv.T + bv)).transpose(1, 2).flatten(2)
    return attn.out_proj(out)


def test_layers_follow_the_published_math() -> None:
    """Post-norm layers with positions added to queries and keys only, against a written-out version."""
    torch.manual_seed(0)
    c = 16
    enc, dec = DETREncoderLayer(c, 4, 32, 0.1).eval(), DETRDecoderLayer(c, 4, 32, 0.1).eval()
    src, pos = torch.randn(2, 6, c), torch.randn(2, 6, c)
    tgt, query_pos = torch.randn(2, 3, c), torch.randn(2, 3, c)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True

    def ffn(layer: torch.nn.Module, x: Tensor) -> Tensor:
        return layer.linear2(torch.relu(layer.linear1(x)))

    with torch.no_grad():
        x = enc.norm1(src + reference_attention(enc.self_attn, src + pos, src + pos, src, mask))
        expected_enc = enc.norm2(x + ffn(enc, x))
        y = dec.norm1(tgt + reference_attention(dec.self_attn, tgt + query_pos, tgt + query_pos, tgt, None))
        y = dec.norm2(y + reference_attention(dec.multihead_attn, y + query_pos, src + pos, src, mask))
        expected_dec = dec.norm3(y + ffn(dec, y))
        torch.testing.assert_close(enc(src, pos, mask), expected_enc, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dec(tgt, query_pos, src, pos, mask), expected_dec, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_position_embedding_formula(offset: float) -> None:
    """At every valid cell (y, x) of a padded mask: features of (y + 1 - offset) / valid_h * 2 pi, then
    of x likewise, feature 2i = sin(v / T^(2i/F)), 2i + 1 = cos(v / T^(2i/F)). DETR: offset 0."""
    f, temperature = 6, 10000.0
    mask = torch.ones(2, 5, 7, dtype=torch.bool)
    mask[0, :4, :7] = False
    mask[1, :5, :3] = False
    pos = PositionEmbeddingSine(num_pos_feats=f, offset=offset)(mask)
    assert pos.shape == (2, 2 * f, 5, 7)
    for b, (valid_h, valid_w) in enumerate([(4, 7), (5, 3)]):
        for y in range(valid_h):
            for x in range(valid_w):
                expected = []
                for v in ((y + 1 - offset) / valid_h * 2 * math.pi, (x + 1 - offset) / valid_w * 2 * math.pi):
                    for i in range(f // 2):
                        expected += [
                            math.sin(v / temperature ** (2 * i / f)),
                            math.cos(v / temperature ** (2 * i / f)),
                        ]
                torch.testing.assert_close(pos[b, :, y, x], torch.tensor(expected), atol=1e-5, rtol=0)


def test_detr_position_embedding_has_no_shift(tiny: torch.nn.Module) -> None:
    """The model's encoding is DETR's (no -0.5); Deformable DETR's default stays shifted."""
    assert tiny.backbone[1].offset == 0.0
    assert PositionEmbeddingSine().offset == 0.5


def test_padding_exact(tiny: torch.nn.Module) -> None:
    """Each image of a padded batch gets the predictions it gets alone (all layers), while the
    official mode's padded predictions differ from the image alone."""
    images, batch, mask = padded_batch(SIZES)
    official = build_detr("detr_r50", **TINY, padding="official").eval()
    official.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        out = tiny(batch, mask)
        out_official = official(batch, mask)
        for i, image in enumerate(images):
            alone = tiny(image[None])
            for key in ("pred_logits", "pred_boxes"):
                torch.testing.assert_close(out[key][i], alone[key][0], atol=1e-4, rtol=1e-4)
                aux, aux_alone = out["aux_outputs"][0][key][i], alone["aux_outputs"][0][key][0]
                torch.testing.assert_close(aux, aux_alone, atol=1e-4, rtol=1e-4)
            assert (out_official["pred_logits"][i] - alone["pred_logits"][0]).abs().max() > 1e-3


@pytest.mark.parametrize("padding", ["exact", "official"])
def test_attention_mask_per_mode(tiny: torch.nn.Module, padding: str) -> None:
    """The transformer's key padding mask: the image mask subsampled at the stride (exact) or resized by
    nearest interpolation (official, the original's ``F.interpolate``)."""
    model = build_detr("detr_r50", **TINY, padding=padding).eval()
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda _, args: seen.append(args[1]))
    _, batch, mask = padded_batch(SIZES)
    try:
        with torch.no_grad():
            model(batch, mask)
    finally:
        handle.remove()
    size = (math.ceil(batch.shape[2] / 32), math.ceil(batch.shape[3] / 32))
    expected = level_mask(mask, size) if padding == "exact" else nearest_mask(mask, size)
    assert torch.equal(seen[0], expected)
    assert not torch.equal(level_mask(mask, size), nearest_mask(mask, size))  # the modes differ here


def test_official_equals_exact_without_padding(tiny: torch.nn.Module) -> None:
    """On an unpadded batch (all-False mask or none) both modes give identical outputs."""
    official = build_detr("detr_r50", **TINY, padding="official").eval()
    official.load_state_dict(tiny.state_dict())
    batch = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 70, 90, dtype=torch.bool)
    with torch.no_grad():
        exact_out, official_out = tiny(batch, mask), official(batch, mask)
        unmasked = official(batch)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(exact_out[key], official_out[key])
        assert torch.equal(unmasked[key], official_out[key])


def test_postprocess_softmax_formula() -> None:
    """Per query: softmax over K + 1, best of the first K (probability and class), box corners times
    (w, h, w, h); sorted by decreasing score; ``num_select`` keeps the best queries."""
    g = torch.Generator().manual_seed(0)
    b, q, k = 2, 6, 4
    logits = torch.randn(b, q, k + 1, generator=g) * 3
    boxes = torch.rand(b, q, 4, generator=g) * 0.5 + 0.25
    sizes = torch.tensor([[480, 640], [300, 200]])
    results = PostProcess(num_select=q, score="softmax")({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for i, result in enumerate(results):
        h, w = sizes[i].tolist()
        expected = []
        for j in range(q):
            e = [math.exp(v) for v in logits[i, j].tolist()]
            probs = [v / sum(e) for v in e[:k]]
            label = max(range(k), key=probs.__getitem__)
            cx, cy, bw, bh = boxes[i, j].tolist()
            corners = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            expected.append((probs[label], label, corners))
        expected.sort(key=lambda row: -row[0])
        torch.testing.assert_close(result["scores"], torch.tensor([r[0] for r in expected]))
        assert result["labels"].tolist() == [r[1] for r in expected]
        torch.testing.assert_close(result["boxes"], torch.tensor([r[2] for r in expected]))
        top2 = PostProcess(num_select=2, score="softmax")(
            {"pred_logits": logits[i : i + 1], "pred_boxes": boxes[i : i + 1]}, sizes[i : i + 1]
        )[0]
        torch.testing.assert_close(top2["scores"], result["scores"][:2])
    with pytest.raises(ValueError, match="score must be one of"):
        PostProcess(score="softmax2")


def test_builder_validates_names_and_overrides() -> None:
    """Unknown variants and fields are refused with the valid choices; the table holds the four models."""
    assert sorted(DETR_VARIANTS) == ["detr_r101", "detr_r101_dc5", "detr_r50", "detr_r50_dc5"]
    assert detr_config("detr_r101_dc5").backbone == "resnet101" and detr_config("detr_r101_dc5").dilation
    with pytest.raises(ValueError, match="unknown DETR model 'detr_r18'"):
        build_detr("detr_r18")
    with pytest.raises(ValueError, match=r"unknown DETR overrides \['encoder_points'\]"):
        build_detr("detr_r50", encoder_points=4)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        detr_config("detr_r50", embed_dims=60, num_heads=8)
    with pytest.raises(ValueError, match="padding must be one of"):
        build_detr("detr_r50", **TINY, padding="zeros")


@pytest.mark.parametrize("name", list(DETR_VARIANTS))
def test_config_files(name: str) -> None:
    """``configs/detr2d/<name>.py`` names its variant, its model dict is a valid :class:`DETRConfig` equal to
    the variant's, and the recipe is the published one."""
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "detr2d" / f"{name}.py")
    model = dict(config["model"])
    assert model.pop("name") == name
    cfg = detr_config(name, **model)
    assert dataclasses.replace(cfg, pretrained=None) == detr_config(name)
    assert cfg.pretrained == f"torchvision://{cfg.backbone}"
    optim, schedule = config["optim"], config["schedule"]
    assert (optim["lr"], optim["lr_backbone"], optim["weight_decay"], optim["clip_max_norm"]) == (
        1e-4,
        1e-5,
        1e-4,
        0.1,
    )
    assert (schedule["epochs"], schedule["lr_drop"], config["train"]["batch_size"]) == (500, 400, 64)
    assert config["criterion"] == dict(
        set_cost_class=1.0,
        set_cost_bbox=5.0,
        set_cost_giou=2.0,
        cls_loss_coef=1.0,
        bbox_loss_coef=5.0,
        giou_loss_coef=2.0,
        eos_coef=0.1,
    )
    criterion = build_detr_criterion(cfg.num_classes, cfg.decoder_layers, **config["criterion"])
    assert criterion.class_loss == "softmax" and criterion.matcher.class_cost == "softmax"
    augment = config["augment"]
    assert augment["scales"] == list(range(480, 801, 32)) and augment["max_size"] == 1333
    assert augment["crop_resize_sizes"] == [400, 500, 600] and augment["crop_size"] == [384, 600]
