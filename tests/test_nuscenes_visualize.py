"""BEV and camera pictures of boxes are written and show the boxes where they are."""

from __future__ import annotations

import cv2
import numpy as np
from nuscenes_fixtures import dataset, val_infos  # noqa: F401

from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES
from datasets.nuscenes.visualize import (
    CLASS_COLORS,
    EGO_COLOR,
    GT_COLOR,
    PRED_COLOR,
    draw_bev,
    draw_camera_boxes,
)


def _shows(pixel: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether an anti-aliased pixel is mostly ``color``."""
    return np.abs(pixel.astype(int) - np.array(color)).max() < 40


def test_bev_draws_ground_truth_and_predictions(tmp_path):
    gt = np.array([[10.0, 0.0, -1.0, 2.0, 4.5, 1.6, 0.0, 0.0, 0.0]])
    pred = gt + np.array([[0.0, 5.0, 0, 0, 0, 0, 0, 0, 0]])
    image = draw_bev(gt, pred, tmp_path / "bev.png", pred_scores=np.array([0.9]))
    assert image.shape == (819, 819, 3) and cv2.imread(str(tmp_path / "bev.png")).shape == image.shape
    # lidar (x, y) -> pixel (col, row) = ((51.2 - y) * 8, (51.2 - x) * 8); the front edge is at x = 12.25
    assert _shows(image[round((51.2 - 12.25) * 8), round(51.2 * 8)], GT_COLOR)
    assert _shows(image[round((51.2 - 12.25) * 8), round((51.2 - 5.0) * 8)], PRED_COLOR)
    hidden = draw_bev(gt, pred, pred_scores=np.array([0.1]), score_threshold=0.3)
    assert not _shows(hidden[round((51.2 - 12.25) * 8), round((51.2 - 5.0) * 8)], PRED_COLOR)


def test_camera_mosaic_draws_projected_boxes(dataset, val_infos, tmp_path):  # noqa: F811
    sample = val_infos["samples"][0]
    images = [cv2.imread(str(dataset.root / sample["cameras"][name]["path"])) for name in CAMERA_NAMES]
    lidar2img = np.array([sample["cameras"][name]["lidar2img"] for name in CAMERA_NAMES])
    keep = [i for i, name in enumerate(sample["gt"]["names"]) if name in CLASS_NAMES]
    boxes = np.asarray(sample["gt"]["boxes"])[keep]
    labels = np.array([CLASS_NAMES.index(sample["gt"]["names"][i]) for i in keep])
    mosaic = draw_camera_boxes(images, lidar2img, boxes, labels, tmp_path / "cameras.png")
    height, width = images[0].shape[:2]
    assert mosaic.shape[1:] == (3 * width, 3) and (tmp_path / "cameras.png").is_file()
    cameras, legend = mosaic[: 2 * height], mosaic[2 * height :]
    assert (cameras != np.concatenate([np.concatenate(images[i : i + 3], 1) for i in (0, 3)], 0)).any()
    for color in CLASS_COLORS:  # the legend strip shows every class colour
        assert (legend == np.array(color, np.uint8)).all(-1).any(), color
    unlabelled = draw_camera_boxes(images, lidar2img, boxes)
    assert unlabelled.shape == (2 * height, 3 * width, 3)  # one colour (ground truth): no legend


def test_bev_picture_explains_itself():
    image = draw_bev(np.zeros((0, 9)), np.zeros((0, 9)))
    center = round(51.2 * 8)
    assert _shows(image[center - 8, center], EGO_COLOR)  # the ego triangle points forward (+x, up)
    assert (image[:60, :160] == np.array(GT_COLOR, np.uint8)).all(-1).any()  # legend swatches
    assert (image[:60, :160] == np.array(PRED_COLOR, np.uint8)).all(-1).any()
