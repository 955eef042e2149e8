"""Hungarian 3D assignment against brute force, and the losses built on it."""

from __future__ import annotations

import itertools

import pytest
import torch

from bev import DetectionLoss3D, HeadOutput, HungarianAssigner3D, encode_boxes
from bev.assigner import focal_cost


def _case(seed: int, num_queries: int, num_gt: int, num_classes: int = 3):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_classes, generator=generator)
    code = torch.randn(num_queries, 10, generator=generator)
    labels = torch.randint(0, num_classes, (num_gt,), generator=generator)
    gt_code = torch.randn(num_gt, 10, generator=generator)
    return logits, code, labels, gt_code


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("num_queries", "num_gt"), [(4, 2), (5, 3), (3, 3), (2, 4)])
def test_assignment_matches_brute_force(seed, num_queries, num_gt):
    assigner = HungarianAssigner3D()
    logits, code, labels, gt_code = _case(seed, num_queries, num_gt)
    cost = assigner.cost_matrix(logits, code, labels, gt_code)
    query_index, gt_index = assigner.assign(logits, code, labels, gt_code)
    assert len(query_index) == min(num_queries, num_gt)
    assert len(set(query_index.tolist())) == len(query_index) and len(set(gt_index.tolist())) == len(gt_index)
    if num_gt <= num_queries:
        best = min(
            sum(float(cost[q, g]) for g, q in enumerate(p))
            for p in itertools.permutations(range(num_queries), num_gt)
        )
    else:
        best = min(
            sum(float(cost[q, g]) for q, g in enumerate(p))
            for p in itertools.permutations(range(num_gt), num_queries)
        )
    assert abs(float(cost[query_index, gt_index].sum()) - best) < 1e-5


def test_cost_terms_and_weights():
    logits, code, labels, gt_code = _case(0, 4, 2)
    prob = logits.sigmoid()
    q, g = 1, 0
    p = prob[q, labels[g]]
    expected_focal = -0.25 * (1 - p) ** 2 * torch.log(p + 1e-12) + 0.75 * p**2 * torch.log(1 - p + 1e-12)
    torch.testing.assert_close(focal_cost(logits, labels, 0.25, 2.0)[q, g], expected_focal)
    l1 = (code[q, :8] - gt_code[g, :8]).abs().sum()  # velocity (entries 8, 9) is not in the cost
    cost = HungarianAssigner3D().cost_matrix(logits, code, labels, gt_code)
    torch.testing.assert_close(cost[q, g], 2.0 * expected_focal + 0.25 * l1)


def test_no_ground_truth_assigns_nothing():
    logits, code, _, _ = _case(0, 4, 0)
    query_index, gt_index = HungarianAssigner3D().assign(
        logits, code, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 10)
    )
    assert query_index.numel() == 0 and gt_index.numel() == 0


def test_loss_of_a_perfect_match_is_only_background_focal():
    num_classes = 3
    boxes = torch.tensor([[1.0, 2.0, 0.5, 2.0, 4.0, 1.5, 0.3, 1.0, float("nan")]])
    labels = torch.tensor([2])
    code = encode_boxes(boxes).nan_to_num(0.0)
    box_code = torch.cat([code, torch.randn(3, 10)])[None, None]  # (L=1, B=1, Q=4, 10)
    logits = torch.full((1, 1, 4, num_classes), -20.0)
    logits[0, 0, 0, 2] = 20.0
    criterion = DetectionLoss3D(num_classes, num_layers=1)
    losses = criterion(HeadOutput(logits, box_code), {"gt_boxes": [boxes], "gt_labels": [labels]})
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert float(losses["loss_bbox"]) < 1e-6  # the NaN velocity is ignored
    assert float(losses["loss_cls"]) < 1e-6
    assert criterion.weight_dict == {"loss_cls": 2.0, "loss_bbox": 0.25}


def test_loss_on_every_layer_and_normalized_by_box_count():
    torch.manual_seed(0)
    criterion = DetectionLoss3D(3, num_layers=3)
    logits, codes = torch.randn(3, 2, 5, 3), torch.randn(3, 2, 5, 10)
    boxes = [torch.rand(2, 9) + 0.5, torch.rand(1, 9) + 0.5]
    labels = [torch.tensor([0, 1]), torch.tensor([2])]
    losses = criterion(HeadOutput(logits, codes), {"gt_boxes": boxes, "gt_labels": labels})
    assert set(losses) == {
        "loss_cls",
        "loss_bbox",
        "d0.loss_cls",
        "d0.loss_bbox",
        "d1.loss_cls",
        "d1.loss_bbox",
    }
    assert set(criterion.weight_dict) == set(losses)
    doubled = criterion(
        HeadOutput(torch.cat([logits, logits], 1), torch.cat([codes, codes], 1)),
        {"gt_boxes": boxes + boxes, "gt_labels": labels + labels},
    )
    for key, value in losses.items():  # sums double and so does the number of boxes
        torch.testing.assert_close(doubled[key], value)
    with pytest.raises(ValueError, match="gt_labels"):
        criterion(
            HeadOutput(logits, codes),
            {"gt_boxes": boxes, "gt_labels": [torch.tensor([0, 5]), torch.tensor([2])]},
        )
