"""Draw detections (boxes, class names, scores) on images with OpenCV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np


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

    A small image is first enlarged by an integer factor (nearest neighbour) until its short side is
    at least ``min_side``, so that captions stay legible; boxes are scaled with it.
    """
    zoom = max(1, -(-min_side // min(image.shape[:2])))
    canvas = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1) if zoom > 1 else image.copy()
    scale = max(0.4, min(canvas.shape[:2]) / 800)
    thickness = max(1, round(2 * scale))
    for box, label, score in zip(boxes, labels, scores, strict=True):
        color = class_color(label)
        x1, y1, x2, y2 = (int(round(v * zoom)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness)
        caption = f"{names.get(label, str(label))} {score:.2f}"
        (tw, th), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - baseline, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + baseline), color, -1)
        cv2.putText(
            canvas, caption, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    return canvas
