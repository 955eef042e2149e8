"""detr2d losses: matcher vs brute force, every loss term on hand-made cases, GIoU, post-processing."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from detr2d import HungarianMatcher, PostProcess, build_criterion, sigmoid_focal_loss
from detr2d.layers.box_ops import (
    aligned_generalized_box_iou,
    apply_box_delta,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)
from detr2d.runtime import losses as losses_module


def random_outputs(batch: int, queries: int, classes: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [
            0.2 + 0.6 * torch.rand(batch, queries, 2, generator=g),
            0.05 + 0.3 * torch.rand(batch, queries, 2, generator=g),
        ],
        -1,
    )
    return {"pred_logits": torch.randn(batch, queries, classes, generator=g), "pred_boxes": boxes}


def random_targets(counts: list[int], classes: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed + 1000)
    targets = []
    for k in counts:
        boxes = torch.cat(
            [0.2 + 0.6 * torch.rand(k, 2, generator=g), 0.05 + 0.3 * torch.rand(k, 2, generator=g)], -1
        )
        targets.append({"labels": torch.randint(0, classes, (k,), generator=g), "boxes": boxes})
    return targets


@pytest.mark.parametrize("seed", range(12))
def test_matcher_equals_brute_force(seed: int) -> None:
    """The Hungarian assignment has the minimum total cost over all injective assignments."""
    queries, classes = 5, 3
    counts = [seed % 6, (seed * 7) % 6]  # 0..5 targets, including none and as many as queries
    outputs = random_outputs(2, queries, classes, seed)
    targets = random_targets(counts, classes, seed)
    matcher = HungarianMatcher()
    indices = matcher(outputs, targets)
    for b, (tgt, (rows, cols)) in enumerate(zip(targets, indices, strict=True)):
        k = len(tgt["labels"])
        assert len(rows) == len(cols) == k
        assert len(set(rows.tolist())) == k and sorted(cols.tolist()) == list(range(k))
        if k == 0:
            continue
        cost = matcher.cost_matrix(
            outputs["pred_logits"][b], outputs["pred_boxes"][b], tgt["labels"], tgt["boxes"]
        )
        best = min(
            sum(cost[q, j].item() for j, q in enumerate(perm))
            for perm in itertools.permutations(range(queries), k)
        )
        assert cost[rows, cols].sum().item() == pytest.approx(best, abs=1e-5)


def test_matcher_cost_terms_by_hand() -> None:
    """2 * focal-class + 5 * L1 + 2 * (-GIoU) for one prediction and one target."""
    matcher = HungarianMatcher()
    logits = torch.tensor([[0.0, 2.0]])
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    target = torch.tensor([[0.5, 0.6, 0.2, 0.2]])
    p = 1 / (1 + math.exp(-2.0))
    pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
    neg = 0.75 * p**2 * -math.log(1 - p + 1e-8)
    giou = (0.2 * 0.1) / (2 * 0.04 - 0.02)  # overlap 0.2 x 0.1; hull == union
    expected = 2 * (pos - neg) + 5 * 0.1 - 2 * giou
    cost = matcher.cost_matrix(logits, pred, torch.tensor([1]), target)
    assert cost.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_focal_loss_by_hand() -> None:
    """At logit 0 (p = 0.5): positives 0.25 * 0.25 * log 2, negatives 0.75 * 0.25 * log 2."""
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.0625, 0.1875]) * math.log(2))
    logit = torch.tensor([1.5])
    p = torch.sigmoid(logit)
    torch.testing.assert_close(sigmoid_focal_loss(logit, torch.ones(1), alpha=-1, gamma=0), -torch.log(p))


def hand_case() -> tuple[dict, list[dict]]:
    """One image, two queries, two classes; query 1 is clearly the match of the single target."""
    outputs = {
        "pred_logits": torch.tensor([[[0.0, 0.0], [-1.0, 3.0]]]),
        "pred_boxes": torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2]]]),
    }
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.4]])}]
    return outputs, targets


def test_each_loss_term_by_hand() -> None:
    criterion = build_criterion(num_classes=2, decoder_layers=1)
    outputs, targets = hand_case()
    losses = criterion(outputs, targets)
    onehot = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    expected_ce = sigmoid_focal_loss(outputs["pred_logits"], onehot).sum()  # / 1 box
    torch.testing.assert_close(losses["loss_cls"], expected_ce)
    assert losses["loss_bbox"].item() == pytest.approx(0.1 + 0.0 + 0.0 + 0.2)
    # pred xyxy (0.4, 0.4, 0.6, 0.6), target (0.5, 0.3, 0.7, 0.7): inter 0.1 * 0.2, union 0.04 + 0.08 - 0.02,
    # hull 0.3 * 0.4
    iou, hull = 0.02 / 0.10, 0.12
    giou = iou - (hull - 0.10) / hull
    assert losses["loss_giou"].item() == pytest.approx(1 - giou)
    assert losses["class_error"].item() == 0.0
    total = criterion.weighted_total(losses)
    expected = 2 * losses["loss_cls"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    torch.testing.assert_close(total, expected)


def test_aux_and_encoder_losses() -> None:
    """``d{i}.`` terms for aux layers; ``enc.`` terms matched class-agnostically (every label 0)."""
    criterion = build_criterion(num_classes=2, decoder_layers=2)
    outputs, targets = hand_case()
    enc = {
        "pred_logits": torch.tensor([[[4.0, -4.0], [-4.0, -4.0]]]),  # cell 0 is the proposal
        "pred_boxes": torch.tensor([[[0.6, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1]]]),
    }
    full = {**outputs, "aux_outputs": [dict(outputs)], "enc_outputs": enc}
    losses = criterion(full, targets)
    for prefix in ("", "d0.", "enc."):
        assert {f"{prefix}loss_cls", f"{prefix}loss_bbox", f"{prefix}loss_giou"} <= set(losses)
    torch.testing.assert_close(losses["d0.loss_cls"], losses["loss_cls"])
    assert losses["enc.loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    expected_ce = sigmoid_focal_loss(enc["pred_logits"], torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])).sum()
    torch.testing.assert_close(losses["enc.loss_cls"], expected_ce)
    assert torch.isfinite(criterion.weighted_total(losses))
    with pytest.raises(ValueError, match=r"no weight for loss terms \['d1.loss_bbox'\]"):
        criterion.weighted_total({**losses, "d1.loss_bbox": losses["loss_bbox"]})


def test_normalization_by_boxes_and_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Terms are divided by the box count averaged over processes (simulated: 2 processes, 3 + 5 boxes)."""
    criterion = build_criterion(num_classes=3, decoder_layers=1)
    outputs = random_outputs(1, 6, 3, seed=0)
    targets = random_targets([3], 3, seed=0)
    local = criterion(outputs, targets)
    monkeypatch.setattr(losses_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(losses_module.dist, "all_reduce", lambda t: t.add_(5.0))
    averaged = criterion(outputs, targets)
    for key in ("loss_cls", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(averaged[key], local[key] * 3 / 4)


def test_no_targets_gives_pure_negative_loss() -> None:
    criterion = build_criterion(num_classes=2, decoder_layers=1)
    outputs, _ = hand_case()
    losses = criterion(outputs, [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    torch.testing.assert_close(
        losses["loss_cls"], sigmoid_focal_loss(outputs["pred_logits"], torch.zeros(1, 2, 2)).sum()
    )
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0


def test_bad_targets_raise_value_error() -> None:
    criterion = build_criterion(num_classes=2, decoder_layers=1)
    outputs, targets = hand_case()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        criterion(outputs, [{"labels": torch.tensor([2]), "boxes": targets[0]["boxes"]}])
    with pytest.raises(ValueError, match="int64"):
        criterion(outputs, [{"labels": torch.tensor([1.0]), "boxes": targets[0]["boxes"]}])
    with pytest.raises(ValueError, match=r"boxes must have shape \(1, 4\)"):
        criterion(outputs, [{"labels": torch.tensor([1]), "boxes": torch.zeros(2, 4)}])
    with pytest.raises(ValueError, match="list of 1 dicts"):
        criterion(outputs, targets * 2)
    with pytest.raises(ValueError, match="unknown criterion overrides"):
        build_criterion(cost_class=1.0)


def test_giou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    expected = torch.tensor([1 / 7 - 2 / 9, 0 - 1 / 3, 1 / 16, 1.0])  # overlap, disjoint, contained, equal
    torch.testing.assert_close(aligned_generalized_box_iou(a, b), expected)
    torch.testing.assert_close(generalized_box_iou(a, b).diagonal(), expected)
    assert generalized_box_iou(a, b).shape == (4, 4)
    torch.testing.assert_close(box_iou(a[:1], b[:1]), torch.tensor([[1 / 7]]))
    with pytest.raises(ValueError, match="x1 < x0"):
        generalized_box_iou(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), b)


def test_box_conversions_and_deltas() -> None:
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(boxes), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    torch.testing.assert_close(
        inverse_sigmoid(torch.tensor([0.5, 0.0, 1.0])), torch.tensor([0.0, math.log(1e-5), -math.log(1e-5)])
    )
    torch.testing.assert_close(apply_box_delta(torch.zeros(1, 4), boxes), boxes)
    # 2-d references move the centre only; the size comes from the delta alone
    out = apply_box_delta(torch.tensor([[0.0, 0.0, 0.0, -2.0]]), torch.tensor([[0.3, 0.7]]))
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.7, 0.5, torch.sigmoid(torch.tensor(-2.0)).item()]]))


def test_postprocess_top_scores_labels_and_absolute_boxes() -> None:
    """Top-k over queries x classes; label = flat index % C; boxes scaled by (w, h) of (h, w) sizes."""
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 3] = 2.0  # second: query 0, class 3
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    results = PostProcess(num_select=2)(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]])
    )
    assert len(results) == 1
    r = results[0]
    torch.testing.assert_close(r["scores"], torch.sigmoid(torch.tensor([3.0, 2.0])))
    assert r["labels"].tolist() == [1, 3]
    torch.testing.assert_close(
        r["boxes"], torch.tensor([[0.0, 0.0, 100.0, 100.0], [80.0, 30.0, 120.0, 70.0]])
    )
    assert PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[1, 1]]))[0][
        "scores"
    ].shape == (12,)
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([100, 200]))
