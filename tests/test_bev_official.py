"""The published variants have the released checkpoints' keys, and those checkpoints load strictly.

The key lists in ``tests/reference_keys/`` (``key<TAB>[shape]<TAB>dtype``) were read from the original
BEVFormer / DETR3D code built with its published configs (643 / 1001 / 1089 / 946 keys).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bev_helpers import one_thread  # noqa: F401 (autouse fixture)

from bev import build_bev_model
from bev.official import load_official_checkpoint, official_key_map, official_state_dict

KEYS = Path(__file__).resolve().parent / "reference_keys"
PUBLISHED = {
    "bevformer_tiny": ("bevformer_keys_tiny.txt", 643),
    "bevformer_small": ("bevformer_keys_small.txt", 1001),
    "bevformer_base": ("bevformer_keys_base.txt", 1089),
    "detr3d": ("detr3d_keys.txt", 946),
}


def reference_rows(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of a published model's checkpoint, in the file's order."""
    rows = []
    for line in (KEYS / PUBLISHED[name][0]).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(v) for v in shape.strip("[]").split(",") if v.strip()), dtype))
    return rows


def fake_checkpoint(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with every official key of ``name``, random tensors of the listed shapes/dtypes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in reference_rows(name):
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator, dtype=getattr(torch, dtype))
    return state


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """The four published models at full size (built once; ~10 s together)."""
    return {name: build_bev_model(name, backend="reference") for name in PUBLISHED}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_model_keys_shapes_and_dtypes_are_the_official_ones(models, name):
    rows = reference_rows(name)
    assert len(rows) == PUBLISHED[name][1]
    exported = official_state_dict(models[name])
    ours = {
        key: (tuple(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in exported.items()
    }
    assert ours == {key: (shape, dtype) for key, shape, dtype in rows}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_official_checkpoint_loads_strictly_and_fills_every_tensor(models, name):
    model = models[name]
    state = fake_checkpoint(name)
    mapping = load_official_checkpoint(model, {"state_dict": state, "meta": {"config": "..."}})
    own = model.state_dict()
    assert len(mapping) == len(own) == len(state)
    for ours, theirs in mapping.items():
        assert torch.equal(own[ours], state[theirs]), ours


def test_checkpoint_file_loads_and_published_modules_receive_their_tensors(models, tmp_path):
    model = models["bevformer_tiny"]
    state = fake_checkpoint("bevformer_tiny", seed=1)
    path = tmp_path / "bevformer_tiny_epoch_24.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 24}}, path)
    load_official_checkpoint(model, path)
    encoder, head = model.encoder, model.head
    prefix = "pts_bbox_head.transformer."
    assert torch.equal(encoder.can_bus_mlp[2].weight, state[prefix + "can_bus_mlp.2.weight"])
    assert torch.equal(encoder.level_embeds, state[prefix + "level_embeds"])
    layer = encoder.layers[1]
    assert torch.equal(
        layer.spatial_cross_attention.value_proj.weight,
        state[prefix + "encoder.layers.1.attentions.1.deformable_attention.value_proj.weight"],
    )
    assert torch.equal(layer.norm2.bias, state[prefix + "encoder.layers.1.norms.1.bias"])
    # detr2d's decoder layer calls the norm after self-attention norm2: it is the official norms.0.
    assert torch.equal(head.layers[3].norm2.weight, state[prefix + "decoder.layers.3.norms.0.weight"])
    assert torch.equal(encoder.col_embed.weight, state["pts_bbox_head.positional_encoding.col_embed.weight"])
    assert torch.equal(
        model.backbone.body.layer4[2].bn3.running_var, state["img_backbone.layer4.2.bn3.running_var"]
    )
    assert torch.equal(head.code_weights, state["pts_bbox_head.code_weights"])


def test_detr3d_norms_follow_its_operation_order(models):
    mapping = official_key_map(models["detr3d"])
    assert (
        mapping["head.layers.0.norm1.weight"] == "pts_bbox_head.transformer.decoder.layers.0.norms.0.weight"
    )
    assert mapping["head.layers.0.cross_attn.position_encoder.3.weight"] == (
        "pts_bbox_head.transformer.decoder.layers.0.attentions.1.position_encoder.3.weight"
    )


def test_bad_checkpoints_raise_errors_naming_the_keys(models):
    model = models["bevformer_tiny"]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    state = fake_checkpoint("bevformer_tiny")
    del state["pts_bbox_head.transformer.can_bus_mlp.norm.bias"]
    with pytest.raises(
        ValueError,
        match=r"official checkpoint <state_dict> does not fit the model: 1 missing keys "
        r"\[pts_bbox_head\.transformer\.can_bus_mlp",
    ):
        load_official_checkpoint(model, state)
    state = fake_checkpoint("bevformer_tiny")
    state["pts_bbox_head.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 unexpected keys \[pts_bbox_head\.extra\.weight\]"):
        load_official_checkpoint(model, state)
    state = fake_checkpoint("bevformer_tiny")
    state["pts_bbox_head.bev_embedding.weight"] = torch.zeros(40000, 256)  # a base checkpoint's BEV
    with pytest.raises(
        ValueError,
        match=r"pts_bbox_head\.bev_embedding\.weight: checkpoint \(40000, 256\) vs model \(2500, 256\)",
    ):
        load_official_checkpoint(model, state)
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_official_checkpoint(model, {"state_dict": {"a": 1}})
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)  # nothing was loaded


def test_models_with_our_options_have_no_official_names():
    model = build_bev_model("bevformer_tiny", num_query_groups=2)
    with pytest.raises(ValueError, match="query_embedding.weight"):
        load_official_checkpoint(model, fake_checkpoint("bevformer_tiny"))


def test_tools_load_a_released_file_and_our_checkpoints(models, tmp_path):
    """The BEV task's ``load_weights`` (tools/test.py, tools/predict.py) takes a released mmdet3d file as
    well as our own checkpoints."""
    from bev.task import NuScenesDetectionTask
    from configs import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "bev" / "bevformer_tiny.py")
    task = NuScenesDetectionTask(config)
    released = fake_checkpoint("bevformer_tiny", seed=3)
    torch.save({"state_dict": released, "meta": {"epoch": 24}}, tmp_path / "bevformer_tiny_epoch_24.pth")
    model = models["bevformer_tiny"]
    task.load_weights(model, tmp_path / "bevformer_tiny_epoch_24.pth")
    exported = official_state_dict(model)
    assert all(torch.equal(exported[key], value) for key, value in released.items())
    torch.save({"model": model.state_dict()}, tmp_path / "ours.pth")
    fresh = build_bev_model("bevformer_tiny", backend="reference")
    task.load_weights(fresh, tmp_path / "ours.pth")
    pairs = zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
