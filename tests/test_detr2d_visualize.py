"""COCO detection pictures: the higher score on top, and a caption for every detection even when boxes
nearly coincide."""

from __future__ import annotations

import numpy as np

from detr2d.visualize import class_color, draw_detections

NAMES = {1: "circle", 2: "square", 3: "triangle", 4: "star"}


def _band_pixels(image: np.ndarray, label: int) -> int:
    """How many pixels show ``label``'s colour exactly (its caption band and its outline)."""
    return int((image == np.array(class_color(label), np.uint8)).all(-1).sum())


def test_higher_score_drawn_on_top() -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    box = [100, 150, 300, 350]
    for labels, scores in (([1, 2], [0.4, 0.9]), ([2, 1], [0.9, 0.4])):
        drawn = draw_detections(image, [box, box], labels, scores, NAMES)
        assert (drawn[250, 100] == class_color(2)).all()  # the left edge: square 0.90 over circle 0.40
    drawn = draw_detections(image, [box, box], [1, 2], [0.9, 0.4], NAMES)
    assert (drawn[250, 100] == class_color(1)).all()


def test_near_duplicates_each_get_a_caption_of_their_own() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    boxes = [[100, 100, 300, 300], [102, 101, 301, 302], [350, 150, 500, 400], [351, 152, 502, 399]]
    drawn = draw_detections(image, boxes, [1, 2, 3, 4], [0.55, 0.91, 0.8, 0.62], NAMES)
    for label in (1, 2, 3, 4):  # 4 detections, 4 visible caption bands (far more pixels than an outline)
        assert _band_pixels(drawn, label) > 1500, NAMES[label]
