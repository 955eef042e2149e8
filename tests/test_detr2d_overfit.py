"""A small Deformable DETR overfits a handful of synthetic images: loss down > 90 %, boxes on the targets."""

from __future__ import annotations

import pytest
import torch
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)

from detr2d import PostProcess, build_criterion, build_model
from detr2d.layers.box_ops import box_cxcywh_to_xyxy, box_iou

SIZE = 64
CONFIG = dict(
    backbone="resnet18",
    train_backbone=False,  # random frozen features are distinctive enough; saves the backbone backward
    embed_dims=64,
    num_heads=4,
    encoder_layers=1,
    decoder_layers=2,
    ffn_dims=128,
    num_queries=10,
    num_classes=2,
    dropout=0.0,
)


def synthetic_images(n: int = 4) -> tuple[torch.Tensor, list[dict]]:
    """Dim noise with 1-2 bright rectangles; the rectangle's colour channel (red/green) is its class."""
    g = torch.Generator().manual_seed(0)
    images, targets = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.2, []
    for i in range(n):
        boxes, labels = [], []
        for j in range(1 + i % 2):
            w, h = (0.25 + 0.3 * torch.rand(2, generator=g)).tolist()
            x0 = int((1 - w) * torch.rand(1, generator=g).item() * SIZE)
            y0 = int((1 - h) * torch.rand(1, generator=g).item() * SIZE)
            x1, y1 = x0 + int(w * SIZE), y0 + int(h * SIZE)
            label = (i + j) % 2
            images[i, label, y0:y1, x0:x1] = 1.0
            boxes.append([(x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE, (x1 - x0) / SIZE, (y1 - y0) / SIZE])
            labels.append(label)
        targets.append({"labels": torch.tensor(labels), "boxes": torch.tensor(boxes)})
    return images, targets


@pytest.mark.parametrize(
    "name", ["deformable_detr", pytest.param("deformable_detr_two_stage", marks=pytest.mark.slow)]
)
def test_overfit_small_set(name: str) -> None:
    torch.manual_seed(0)
    images, targets = synthetic_images()
    mask = torch.zeros(images.shape[0], SIZE, SIZE, dtype=torch.bool)
    model = build_model(name, **CONFIG)
    criterion = build_criterion(num_classes=CONFIG["num_classes"], decoder_layers=CONFIG["decoder_layers"])
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-4
    )
    history = []
    for _ in range(80):
        loss = criterion.weighted_total(criterion(model(images, mask), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        history.append(loss.item())
    assert min(history[-5:]) < 0.1 * history[0], f"loss {history[0]:.3f} -> {history[-5:]}"

    model.eval()
    with torch.no_grad():
        results = PostProcess(num_select=10)(model(images, mask), torch.tensor([[SIZE, SIZE]] * len(targets)))
    for result, target in zip(results, targets, strict=True):
        k = len(target["labels"])
        top = slice(0, k)  # the k best detections are the k objects
        iou = box_iou(result["boxes"][top], box_cxcywh_to_xyxy(target["boxes"]) * SIZE)
        same_label = result["labels"][top, None] == target["labels"][None]
        assert ((iou > 0.7) & same_label).any(0).all(), (iou, result["labels"][top], target["labels"])
