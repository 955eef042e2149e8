"""PETR / PETRv2 models: the released checkpoints' exact keys, strict loading, batch invariance, training.

The key lists in ``tests/reference_keys/petr*_keys_*.txt`` (``key<TAB>[shape]<TAB>dtype``) were read from
the original code (megvii-research/PETR) built with each published config (558 / 564 / 854 / 854 / 966 /
966 keys).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bev_helpers import one_thread  # noqa: F401 (autouse fixture)

from bev.box_coder import CODE_WEIGHTS
from bev.petr import PETR
from bev.petr_builder import PREPROCESS, VARIANTS, build_petr, build_petr_criterion
from bev.petr_official import load_petr_checkpoint, petr_key_map, petr_state_dict
from bev.petr_task import PETRTask
from detr2d.layers.vovnet import VoVNetSpec
from detr2d.runtime.cli import load_task_config

KEYS = Path(__file__).resolve().parent / "reference_keys"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bev"
PUBLISHED = {
    "petr_r50dcn_c5": ("petr_keys_r50dcn_gridmask_c5.txt", 558),
    "petr_r50dcn_p4": ("petr_keys_r50dcn_gridmask_p4.txt", 564),
    "petr_vov_p4_800x320": ("petr_keys_vovnet_gridmask_p4_800x320.txt", 854),
    "petr_vov_p4_1600x640": ("petr_keys_vovnet_gridmask_p4_1600x640.txt", 854),
    "petrv2_vov_p4_800x320": ("petrv2_keys_vovnet_gridmask_p4_800x320.txt", 966),
    "petrv2_vov_p4_1600x640": ("petrv2_keys_vovnet_gridmask_p4_1600x640_trainval_cbgs.txt", 966),
}
TINY_VOV = VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 16, 16), 2, (1, 1, 1, 1))
TINY = {
    "vovnet_spec": TINY_VOV,
    "embed_dims": 32,
    "num_heads": 4,
    "ffn_dims": 64,
    "num_queries": 24,
    "num_depths": 8,
    "decoder_layers": 2,
}


def reference_rows(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """(key, shape, dtype) of a published model's checkpoint, in the file's order."""
    rows = []
    for line in (KEYS / PUBLISHED[name][0]).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(v) for v in shape.strip("[]").split(",") if v.strip()), dtype))
    return rows


def test_every_published_variant_has_a_key_list_and_preprocessing():
    assert set(PUBLISHED) == set(PREPROCESS) == set(VARIANTS) - {"petr_demo", "petrv2_demo"}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_model_keys_shapes_dtypes_and_order_are_the_official_ones(name):
    rows = reference_rows(name)
    assert len(rows) == PUBLISHED[name][1]
    config = load_task_config(CONFIGS / f"{name}.py")  # config -> task -> model, as the tools build it
    exported = petr_state_dict(PETRTask(config).build_model())
    ours = [
        (key, tuple(value.shape), str(value.dtype).removeprefix("torch.")) for key, value in exported.items()
    ]
    assert ours == rows


def test_petr_shares_its_branches_and_petrv2_copies_them():
    v1 = build_petr("petr_vov_p4_800x320", **TINY).head
    assert all(branch is v1.cls_branches[0] for branch in v1.cls_branches)
    assert all(branch is v1.reg_branches[0] for branch in v1.reg_branches)
    v2 = build_petr("petrv2_vov_p4_800x320", **TINY).head
    assert len({id(branch) for branch in v2.cls_branches}) == len(v2.cls_branches)
    assert len({id(branch) for branch in v2.reg_branches}) == len(v2.reg_branches)
    assert v1.code_weights.tolist() == pytest.approx(list(CODE_WEIGHTS))
    assert v2.code_weights.tolist() == [1.0] * 10
    assert build_petr_criterion("petrv2_vov_p4_800x320").code_weights.tolist() == [1.0] * 10


def _fake_checkpoint(model: PETR, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the official keys; keys the model shares get the same tensor."""
    generator = torch.Generator().manual_seed(seed)
    own = model.state_dict()
    by_pointer: dict[int, torch.Tensor] = {}
    state = {}
    for ours, theirs in petr_key_map(model).items():
        value = own[ours]
        if value.data_ptr() not in by_pointer:
            if value.dtype == torch.int64:
                by_pointer[value.data_ptr()] = torch.randint(0, 1000, value.shape, generator=generator)
            else:
                by_pointer[value.data_ptr()] = torch.randn(value.shape, generator=generator)
        state[theirs] = by_pointer[value.data_ptr()]
    return state


def test_a_checkpoint_loads_strictly_and_refuses_what_does_not_fit():
    model = build_petr("petr_vov_p4_800x320")
    state = _fake_checkpoint(model)
    load_petr_checkpoint(model, {"state_dict": state})
    exported = petr_state_dict(model)
    assert all(torch.equal(exported[key], value) for key, value in state.items())

    differing = dict(state)
    differing["pts_bbox_head.cls_branches.3.6.bias"] = state["pts_bbox_head.cls_branches.3.6.bias"] + 1
    with pytest.raises(ValueError, match=r"shares one tensor under .*cls_branches.*different values"):
        load_petr_checkpoint(model, differing)
    wrong = dict(state)
    wrong.pop("pts_bbox_head.reference_points.weight")
    wrong["pts_bbox_head.fpe.conv_reduce.weight"] = torch.zeros(1)  # a PETRv2 key
    wrong["img_neck.fpn_convs.0.conv.bias"] = torch.zeros(3)
    with pytest.raises(
        ValueError, match="reference_points.weight.*fpe.conv_reduce.*fpn_convs.0.conv.bias"
    ) as error:
        load_petr_checkpoint(model, wrong)
    assert "1 missing keys" in str(error.value) and "1 unexpected keys" in str(error.value)
    assert "shape mismatches" in str(error.value)


def _camera_ring(num_views: int, batch: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, N, 4, 4) lidar2img of cameras looking outwards in a ring, slightly different per sample."""
    height, width = size
    mats = torch.zeros(batch, num_views, 4, 4)
    for b in range(batch):
        for n in range(num_views):
            yaw = 2 * torch.pi * (n % 6) / 6 + 0.05 * b + 0.02 * (n // 6)
            c, s = torch.cos(torch.tensor(yaw)), torch.sin(torch.tensor(yaw))
            rotation = torch.tensor([[s, -c, 0.0], [0.0, 0.0, -1.0], [c, s, 0.0]])
            lidar2cam = torch.eye(4)
            lidar2cam[:3, :3] = rotation
            lidar2cam[:3, 3] = torch.tensor([0.0, 1.5, -0.5 * (n // 6)])
            intrinsic = torch.eye(4)
            intrinsic[0, 0] = intrinsic[1, 1] = width * 0.8
            intrinsic[0, 2], intrinsic[1, 2] = width / 2, height / 2
            mats[b, n] = intrinsic @ lidar2cam
    return mats


def _batch(
    model: PETR, batch: int, size: tuple[int, int] = (40, 72), seed: int = 0
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    views = model.num_views
    timestamps = torch.zeros(batch, views)
    if views == 12:  # the earlier frame 0.5 s (sample 0), 0.6 s (sample 1), ... before the current one
        timestamps[:, 6:] = 0.5 + 0.1 * torch.arange(batch, dtype=torch.float32)[:, None]
    return {
        "img": torch.randn(batch, views, 3, *size, generator=generator),
        "lidar2img": _camera_ring(views, batch, size),
        "timestamps": timestamps,
    }


@pytest.mark.parametrize("name", ["petr_vov_p4_800x320", "petrv2_vov_p4_800x320"])
def test_batch_of_two_equals_each_sample_alone(name):
    torch.manual_seed(0)
    model = build_petr(name, **TINY).eval()
    batch = _batch(model, 2)
    with torch.no_grad():
        both = model(batch)
        for b in range(2):
            alone = model({key: value[b : b + 1] for key, value in batch.items()})
            assert torch.allclose(both.cls_logits[:, b], alone.cls_logits[:, 0], atol=1e-4)
            assert torch.allclose(both.box_code[:, b], alone.box_code[:, 0], atol=1e-4)
    assert both.cls_logits.shape == (2, 2, 24, 10) and both.box_code.shape == (2, 2, 24, 10)


def test_petrv2_velocity_is_per_second_and_needs_timestamps():
    torch.manual_seed(0)
    model = build_petr("petrv2_vov_p4_800x320", **TINY).eval()
    batch = _batch(model, 1)
    slow = dict(batch, timestamps=batch["timestamps"] * 2)
    with torch.no_grad():
        out, out_slow = model(batch), model(slow)
    assert torch.allclose(out.box_code[..., 8:], 2 * out_slow.box_code[..., 8:], atol=1e-5)
    assert torch.allclose(out.box_code[..., :8], out_slow.box_code[..., :8], atol=1e-6)
    with pytest.raises(ValueError, match="timestamps"):
        model({"img": batch["img"], "lidar2img": batch["lidar2img"]})


def test_decoding_keeps_the_top_scores_in_range():
    torch.manual_seed(0)
    model = build_petr("petr_vov_p4_800x320", **TINY, max_num=30).eval()
    with torch.no_grad():
        detections = model.decode(model(_batch(model, 2, size=(36, 70))))
    assert len(detections) == 2
    for det in detections:
        assert det["boxes"].shape[1] == 9 and 0 < len(det["boxes"]) <= 30
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        assert torch.all(det["boxes"][:, :2].abs() <= 51.2 + 1e-4)


def test_a_tiny_petr_learns_a_few_random_samples():
    torch.manual_seed(0)
    model = build_petr("petr_vov_p4_800x320", **TINY, dropout=0.0).train()
    criterion = build_petr_criterion("petr_vov_p4_800x320", decoder_layers=2)
    batch = _batch(model, 2, size=(32, 64), seed=1)
    generator = torch.Generator().manual_seed(2)
    targets = {"gt_boxes": [], "gt_labels": []}
    for _ in range(2):
        centres = torch.rand(3, 3, generator=generator) * torch.tensor([60.0, 60.0, 4.0]) - torch.tensor(
            [30.0, 30.0, 3.0]
        )
        sizes = torch.rand(3, 3, generator=generator) * 3 + 0.5
        rest = torch.rand(3, 3, generator=generator)
        targets["gt_boxes"].append(torch.cat([centres, sizes, rest], dim=1))
        targets["gt_labels"].append(torch.randint(0, 10, (3,), generator=generator))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = criterion.weighted_total(criterion(model(batch), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


@pytest.mark.parametrize(("name", "neck"), [("petr_r50dcn_c5", False), ("petr_r50dcn_p4", True)])
def test_r50dcn_variants_read_c5_or_p4_with_a_frozen_norm_backbone(name, neck):
    torch.manual_seed(0)
    tiny_head = {key: value for key, value in TINY.items() if key != "vovnet_spec"}
    model = build_petr(name, **tiny_head).train()
    assert (model.neck is not None) == neck
    assert model.head.input_proj.in_channels == (32 if neck else 2048)
    batch_norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and all(not m.training for m in batch_norms)
    assert not any(p.requires_grad for m in batch_norms for p in m.parameters())
    assert model.backbone.body.conv1.weight.requires_grad  # frozen_stages=-1: the stem learns
    out = model(_batch(model, 1, size=(64, 96)))
    assert out.box_code.shape == (2, 1, 24, 10) and torch.isfinite(out.box_code).all()


def test_the_published_petrv2_runs_at_full_width_on_small_images():
    torch.manual_seed(0)
    model = build_petr("petrv2_vov_p4_800x320").eval()
    with torch.no_grad():
        out = model(_batch(model, 1, size=(32, 64)))
    assert out.cls_logits.shape == (6, 1, 900, 10) and out.box_code.shape == (6, 1, 900, 10)
    assert torch.isfinite(out.box_code).all()
    assert len(model.decode(out)[0]["scores"]) <= 300
