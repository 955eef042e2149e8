"""Draw detections (boxes, class names, scores) on images with OpenCV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from datasets.drawing import Rect, draw_label, label_size, place_label


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB color for a class id (golden-ratio hue steps)."""
    hue = int((label * 0.618033988749895 % 1.0) * 180)
    rgb = cv2.cvtColor(np.array([[[hue, 220, 255]]], dtype=np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def draw_detections(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    scores: Sequence[float],
    names: Mapping[int, str],
    min_side: int = 384,
) -> np.ndarray:
    """``image`` (H, W, 3) uint8 RGB with each box (x1, y1, x2, y2 pixels) outlined and captioned
    ``"name score"`` in its class color; unknown ids are captioned with the number.

    Boxes are drawn in ascending score order (the highest on top) and every caption gets a place of its
    own next to its box (near-duplicate boxes get stacked captions), the highest scores choosing first.
    A small image is first enlarged by an integer factor (nearest neighbour) until its short side is
    at least ``min_side``, so that captions stay legible; boxes are scaled with it.
    """
    zoom = max(1, -(-min_side // min(image.shape[:2])))
    canvas = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1) if zoom > 1 else image.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 800)
    thickness = max(1, round(2 * scale))
    order = np.argsort(np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    anchors: list[Rect] = []
    for k in order:
        x1, y1, x2, y2 = (int(round(v * zoom)) for v in boxes[k])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), class_color(labels[k]), thickness)
        anchors.append((x1, y1, x2, y2))
    taken: list[Rect] = []
    captions = []
    for k, anchor in zip(order[::-1], anchors[::-1], strict=True):
        caption = f"{names.get(labels[k], str(labels[k]))} {scores[k]:.2f}"
        rect = place_label(label_size(caption, scale), anchor, canvas.shape[1::-1], taken)
        if rect is not None:
            captions.append((caption, rect, class_color(labels[k])))
    for caption, rect, color in captions:
        draw_label(canvas, caption, rect, scale, (0, 0, 0), band=color)
    return canvas
