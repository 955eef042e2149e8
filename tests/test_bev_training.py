"""A tiny model's loss falls on a fixed batch; training with history frames; the builder's variants."""

from __future__ import annotations

import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    criterion_of,
    loss_terms,
    one_thread,  # noqa: F401 (autouse fixture)
    ring_lidar2img,
    tiny_model,
    translation_motion,
)

from bev import VARIANTS, BEVMemory, bev_model_config, build_bev_model
from datasets.nuscenes.constants import PC_RANGE


def _batch(with_history: bool) -> dict:
    """Two samples; with history: 3 frames, sample 1's oldest frame is scene-start padding."""
    torch.manual_seed(3)
    frames = 3 if with_history else 1
    lidar2img = ring_lidar2img()[None, None].expand(2, frames, -1, -1, -1).contiguous()
    return {
        "img": torch.randn(2, frames, 6, 3, *IMG_SHAPE),
        "lidar2img": lidar2img,
        "ego_motion": translation_motion(-2.0)[None, None].expand(2, frames, 4, 4).contiguous(),
        "history_valid": torch.tensor([[True, True, True], [False, True, True]])[:, 3 - frames :],
        "gt_boxes": [
            torch.tensor(
                [
                    [10.0, 2.0, -0.5, 1.9, 4.5, 1.6, 0.3, 1.0, 0.0],
                    [-8.0, 12.0, -0.8, 0.6, 0.7, 1.7, 1.2, 0.0, 0.0],
                ]
            ),
            torch.tensor([[0.5, -15.0, -0.2, 2.5, 10.0, 3.2, -1.0, 0.0, 0.5]]),
        ],
        "gt_labels": [torch.tensor([0, 8]), torch.tensor([3])],
    }


@pytest.mark.parametrize("head", ["bev", "detr3d"])
def test_loss_falls_on_a_fixed_batch(head):
    model = tiny_model(head=head).train()
    batch = _batch(with_history=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    for _ in range(8):
        losses = loss_terms(model, batch)
        total = criterion_of(model).weighted_total(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert set(losses) == set(criterion_of(model).weight_dict)
    assert totals[-1] < 0.8 * totals[0], totals


def test_history_is_used_without_gradient():
    model = tiny_model().train()
    with_history, without = _batch(True), _batch(False)
    without["img"] = with_history["img"][:, -1:].clone()  # same current frame, no history
    torch.manual_seed(0)
    loss_history = criterion_of(model).weighted_total(loss_terms(model, with_history))
    torch.manual_seed(0)
    loss_plain = criterion_of(model).weighted_total(loss_terms(model, without))
    assert abs(loss_history.item() - loss_plain.item()) > 1e-6
    assert model.training  # history frames run in eval mode, then the mode is restored
    img = with_history["img"].requires_grad_(True)
    criterion_of(model).weighted_total(loss_terms(model, with_history)).backward()
    assert float(img.grad[:, :-1].abs().max()) == 0.0  # no gradient into the history frames
    assert float(img.grad[:, -1].abs().max()) > 0.0


def test_images_are_padded_to_the_size_divisor():
    model = tiny_model().eval()
    img = torch.randn(1, 6, 3, 27, 50)
    lidar2img = ring_lidar2img((27, 50))[None]
    padded = torch.nn.functional.pad(img, (0, 14, 0, 5))  # to 32 x 64
    with torch.no_grad():
        outputs, bev = model.predict(img, lidar2img)
        outputs_padded, bev_padded = model.predict(padded, lidar2img)
    torch.testing.assert_close(bev, bev_padded)
    torch.testing.assert_close(outputs.box_code, outputs_padded.box_code)


def test_forward_returns_raw_outputs_in_both_modes_and_decode_gives_detections():
    model = tiny_model().eval()
    with torch.no_grad():
        outputs = model(_batch(with_history=True))
    layers, queries = len(model.head.layers), model.head.num_queries
    assert outputs.cls_logits.shape == (layers, 2, queries, model.head.num_classes)
    assert outputs.box_code.shape == (layers, 2, queries, 10)
    assert model.train()(_batch(with_history=True)).box_code.shape == (layers, 2, queries, 10)
    detections = model.decode(outputs)
    assert len(detections) == 2
    assert detections[0]["boxes"].shape[1] == 9
    assert detections[0]["scores"].shape == detections[0]["labels"].shape


def test_bev_pos_in_memory_changes_what_the_decoder_reads_but_not_the_bev():
    plain, with_pos = tiny_model().eval(), tiny_model(bev_pos_in_memory=True).eval()
    with_pos.load_state_dict(plain.state_dict())
    img = _batch(with_history=False)["img"][:, 0]
    lidar2img = ring_lidar2img()[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        (outputs, bev), (outputs_pos, bev_pos) = (
            plain.predict(img, lidar2img),
            with_pos.predict(img, lidar2img),
        )
    torch.testing.assert_close(bev_pos, bev)  # the BEV carried to the next frame stays bare
    assert not torch.allclose(outputs_pos.box_code, outputs.box_code)
    with pytest.raises(ValueError, match="bev_pos_in_memory"):
        tiny_model(head="detr3d", bev_pos_in_memory=True)


def test_query_groups_train_independently_and_evaluation_decodes_group_zero():
    groups = 3
    model = tiny_model(num_query_groups=groups, dropout=0.0)
    img = _batch(with_history=False)["img"][:, 0]
    lidar2img = ring_lidar2img()[None].expand(2, -1, -1, -1)
    with torch.no_grad():
        bev = model.eval().compute_bev(img, lidar2img)
        memory = BEVMemory(bev, model.encoder.bev_h, model.encoder.bev_w)
        evaluated = model.head(memory, 2)
        trained = model.head.train()(memory, 2)
    num_queries = model.head.num_queries
    assert evaluated.box_code.shape[1:3] == (2, num_queries)
    assert trained.box_code.shape[1:3] == (2 * groups, num_queries)
    torch.testing.assert_close(trained.box_code[:, ::groups], evaluated.box_code)  # group 0 sees no other
    assert not torch.allclose(trained.box_code[:, 1], evaluated.box_code[:, 0])
    with pytest.raises(ValueError, match="num_query_groups must be a positive int, got 0"):
        tiny_model(num_query_groups=0)


@pytest.mark.parametrize("head", ["bev", "detr3d"])
def test_query_groups_each_match_the_ground_truth(head):
    model = tiny_model(head=head, num_query_groups=2, dropout=0.0).train()
    losses = loss_terms(model, _batch(with_history=False))
    assert set(losses) == set(criterion_of(model).weight_dict)
    # the loss averages the groups: equal groups give the loss of one group
    with torch.no_grad():
        model.head.query_embedding.weight[model.head.num_queries :] = model.head.query_embedding.weight[
            : model.head.num_queries
        ]
    single = tiny_model(head=head, dropout=0.0).train()
    single.load_state_dict(
        {
            k: v[: single.head.num_queries] if k == "head.query_embedding.weight" else v
            for k, v in model.state_dict().items()
        }
    )
    torch.manual_seed(0)
    grouped_losses = loss_terms(model, _batch(with_history=False))
    torch.manual_seed(0)
    single_losses = loss_terms(single, _batch(with_history=False))
    for key, value in single_losses.items():
        torch.testing.assert_close(grouped_losses[key], value)


def test_missing_batch_keys_raise_value_errors():
    model = tiny_model().train()
    batch = _batch(False)
    del batch["lidar2img"]
    with pytest.raises(ValueError, match="lidar2img"):
        model(batch)
    with pytest.raises(ValueError, match="img"):
        model.predict(torch.zeros(1, 5, 3, *IMG_SHAPE), ring_lidar2img()[None])


def test_variant_settings_follow_the_published_configs():
    tiny, small, base = (bev_model_config(f"bevformer_{n}") for n in ("tiny", "small", "base"))
    assert (tiny.backbone, tiny.bev_h, tiny.encoder_layers, tiny.num_levels) == (
        "resnet50",
        50,
        3,
        1,
    )
    assert (small.backbone, small.bev_h, small.encoder_layers, small.num_levels) == (
        "resnet101",
        150,
        3,
        1,
    )
    assert (base.backbone, base.bev_h, base.encoder_layers, base.num_levels) == (
        "resnet101",
        200,
        6,
        4,
    )
    assert bev_model_config("detr3d").head == "detr3d"
    for name in VARIANTS:
        settings = bev_model_config(name)
        assert settings.num_classes == 10 and settings.pc_range == PC_RANGE
    assert (tiny.num_queries, tiny.decoder_layers, tiny.sca_points, tiny.embed_dims) == (
        900,
        6,
        8,
        256,
    )
    with pytest.raises(ValueError, match="unknown BEV model"):
        bev_model_config("bevformer_huge")
    with pytest.raises(ValueError, match="unknown settings"):
        bev_model_config("bev_demo", bev_size=3)


def test_demo_variant_runs_on_the_real_resnet18():
    model = build_bev_model("bev_demo", backend="reference").eval()
    img = torch.randn(1, 6, 3, 64, 96)
    with torch.no_grad():
        detections, bev = model.forward_test(img, ring_lidar2img((64, 96))[None])
    assert bev.shape == (1, 25 * 25, 64)
    assert len(detections[0]["scores"]) == 300


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bevformer_tiny", "bevformer_small", "bevformer_base", "detr3d"])
def test_published_variants_build_and_run(name):
    model = build_bev_model(name).eval()
    settings = bev_model_config(name)
    img = torch.randn(1, 6, 3, 64, 128)
    with torch.no_grad():
        detections, bev = model.forward_test(img, ring_lidar2img((64, 128))[None], can_bus=torch.zeros(1, 18))
    assert len(detections[0]["scores"]) == 300
    if settings.head == "bev":
        assert bev.shape == (1, settings.bev_h * settings.bev_w, 256)
    else:
        assert bev is None
