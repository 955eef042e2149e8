"""DETR loss: softmax matching cost, weighted cross-entropy, all six layers, and a tiny DETR that learns."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)
from test_detr2d_overfit import SIZE, synthetic_images

from detr2d import HungarianMatcher
from detr2d.detr import build_detr, build_detr_criterion


def giou(a: list[float], b: list[float]) -> float:
    """Generalized IoU of two (cx, cy, w, h) boxes, written out."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def random_outputs(b: int, q: int, k: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(b, q, k + 1, generator=g) * 2,
        "pred_boxes": torch.rand(b, q, 4, generator=g) * 0.4 + 0.3,
    }


def test_softmax_matching_cost_formula() -> None:
    """cost = 1 * (-softmax prob of the target class, over all K + 1) + 5 * L1 + 2 * (-GIoU), and the
    assignment minimizes the total cost over every one-to-one choice."""
    q, k = 5, 3
    out = random_outputs(1, q, k)
    target = {
        "labels": torch.tensor([2, 0]),
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.4, 0.6, 0.3, 0.2]]),
    }
    matcher = build_detr_criterion(num_classes=k).matcher
    cost = matcher.cost_matrix(out["pred_logits"][0], out["pred_boxes"][0], target["labels"], target["boxes"])
    expected = torch.zeros(q, 2)
    for i in range(q):
        e = [math.exp(v) for v in out["pred_logits"][0, i].tolist()]
        for j in range(2):
            prob = e[int(target["labels"][j])] / sum(e)
            box, tgt = out["pred_boxes"][0, i].tolist(), target["boxes"][j].tolist()
            l1 = sum(abs(u - v) for u, v in zip(box, tgt, strict=True))
            expected[i, j] = -prob + 5 * l1 - 2 * giou(box, tgt)
    torch.testing.assert_close(cost, expected, atol=1e-5, rtol=1e-5)

    rows, cols = matcher(out, [target])[0]
    best = min(itertools.permutations(range(q), 2), key=lambda p: expected[p[0], 0] + expected[p[1], 1])
    assert float(cost[rows, cols].sum()) == pytest.approx(float(expected[best[0], 0] + expected[best[1], 1]))
    with pytest.raises(ValueError, match="class_cost must be one of"):
        HungarianMatcher(class_cost="sigmoid")


def test_weighted_cross_entropy_formula() -> None:
    """loss_cls = sum_i w_i * (-log softmax_i[y_i]) / sum_i w_i over all queries, y_i the matched label
    or "no object" (index K, weight 0.1); box terms per target box."""
    b, q, k = 2, 4, 3
    out = random_outputs(b, q, k, seed=1)
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.4, 0.3, 0.3]])},
    ]
    indices = [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
    criterion = build_detr_criterion(num_classes=k, decoder_layers=1)
    losses = criterion.layer_losses(out, targets, indices, num_boxes=3.0)
    num, den = 0.0, 0.0
    for img in range(b):
        matched = {int(s): int(targets[img]["labels"][t]) for s, t in zip(*indices[img], strict=True)}
        for i in range(q):
            logits = out["pred_logits"][img, i].tolist()
            label = matched.get(i, k)
            nll = math.log(sum(math.exp(v) for v in logits)) - logits[label]
            weight = 1.0 if label < k else 0.1
            num, den = num + weight * nll, den + weight
    assert float(losses["loss_cls"]) == pytest.approx(num / den, rel=1e-5)
    l1 = sum(
        (out["pred_boxes"][img, s] - targets[img]["boxes"][t]).abs().sum()
        for img in range(b)
        for s, t in zip(*indices[img], strict=True)
    )
    assert float(losses["loss_bbox"]) == pytest.approx(float(l1) / 3.0, rel=1e-5)


def test_losses_of_every_layer_and_weights() -> None:
    """loss_<name> for the last layer, d{i}.loss_<name> for the 5 earlier ones; weights 1 / 5 / 2."""
    out = random_outputs(2, 6, 4)
    out["aux_outputs"] = [random_outputs(2, 6, 4, seed=s) for s in range(1, 6)]
    targets = [
        {"labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
    ]
    criterion = build_detr_criterion(num_classes=4)
    losses = criterion(out, targets)
    names = ("loss_cls", "loss_bbox", "loss_giou")
    expected_keys = set(names) | {f"d{i}.{n}" for i in range(5) for n in names} | {"class_error"}
    assert set(losses) == expected_keys
    total = sum(
        w * losses[p + n]
        for p in ["", *[f"d{i}." for i in range(5)]]
        for n, w in zip(names, (1, 5, 2), strict=True)
    )
    torch.testing.assert_close(criterion.weighted_total(losses), total)
    with pytest.raises(ValueError, match=r"5 logits per query \(num_classes=4, class_loss='softmax'\)"):
        criterion({"pred_logits": torch.zeros(2, 6, 4), "pred_boxes": out["pred_boxes"]}, targets)


def test_tiny_detr_loss_falls() -> None:
    """A small DETR (ResNet-18, 64 channels) trained on 4 synthetic images: the loss falls below a quarter."""
    torch.manual_seed(0)
    images, targets = synthetic_images()
    mask = torch.zeros(images.shape[0], SIZE, SIZE, dtype=torch.bool)
    config = dict(
        backbone="resnet18",
        train_backbone=False,
        embed_dims=64,
        num_heads=4,
        encoder_layers=1,
        decoder_layers=2,
        ffn_dims=128,
        num_queries=10,
        num_classes=2,
        dropout=0.0,
    )
    model = build_detr("detr_r50", **config)
    criterion = build_detr_criterion(num_classes=2, decoder_layers=2)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-4
    )
    history = []
    for _ in range(60):
        loss = criterion.weighted_total(criterion(model(images, mask), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(loss.item())
    assert min(history[-5:]) < 0.25 * history[0], f"loss {history[0]:.3f} -> {history[-5:]}"
