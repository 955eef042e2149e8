"""BEV and camera pictures of boxes: boxes where they are, forward (+y) up, predictions in distinct class
colours with the higher scores on top, ground truth dashed, text that grows with the picture and is never
cut, captions that never cover one another."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from nuscenes_fixtures import dataset, val_infos  # noqa: F401

from datasets.drawing import label_size, overlaps, place_label
from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES
from datasets.nuscenes.synthetic_world import CATEGORY_SPECS
from datasets.nuscenes.visualize import (
    CLASS_COLORS,
    EGO_COLOR,
    GT_COLOR,
    MOSAIC_LAYOUT,
    PRED_COLOR,
    camera_style,
    draw_bev,
    draw_camera_boxes,
    legend_layout,
)

CENTER = round(51.2 * 8)  # pixel of the ego vehicle in the default BEV (range +-51.2 m, 8 px/m)


def _shows(pixel: np.ndarray, color: tuple[int, int, int]) -> bool:
    """Whether an anti-aliased pixel is mostly ``color``."""
    return np.abs(pixel.astype(int) - np.array(color)).max() < 40


def _bev_pixel(x: float, y: float) -> tuple[int, int]:
    """(row, col) of lidar (x, y) in the default BEV: +y (forward) up, +x (right) to the right."""
    return round((51.2 - y) * 8), round((x + 51.2) * 8)


def _box(x: float, y: float, yaw: float = np.pi / 2, size: tuple[float, float, float] = (2.0, 4.5, 1.6)):
    return np.array([[x, y, -1.0, *size, yaw, 0.0, 0.0]])


def _lab(colors) -> np.ndarray:
    lab = cv2.cvtColor(np.asarray(colors, np.uint8).reshape(-1, 1, 3), cv2.COLOR_BGR2LAB).reshape(-1, 3)
    return lab.astype(float) * [100 / 255, 1, 1]


def _forward_camera(width: int, height: int) -> np.ndarray:
    """lidar2img of a pinhole camera at the lidar origin looking along +y (x right, z up), 90 deg wide."""
    focal = width / 2
    intrinsic = np.array([[focal, 0, width / 2, 0], [0, focal, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    lidar2cam = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    return intrinsic @ lidar2cam


def _mosaic(width: int, height: int, boxes: np.ndarray, **kwargs) -> np.ndarray:
    images = [np.full((height, width, 3), 128, np.uint8) for _ in CAMERA_NAMES]
    lidar2img = np.stack([_forward_camera(width, height)] * len(CAMERA_NAMES))
    return draw_camera_boxes(images, lidar2img, boxes, **kwargs)


def test_bev_draws_ground_truth_and_predictions(tmp_path):
    gt = _box(0.0, 15.0)  # facing forward: front edge at y = 17.25 between x = -1 and 1
    pred = gt + np.array([[5.0, 0, 0, 0, 0, 0, 0, 0, 0]])
    image = draw_bev(gt, pred, tmp_path / "bev.png", pred_scores=np.array([0.9]))
    assert image.shape[0] == 819 and image.shape[1] > 819  # the map, then the legend panel on the right
    assert cv2.imread(str(tmp_path / "bev.png")).shape == image.shape
    row, col = _bev_pixel(0.0, 17.25)
    assert any(_shows(p, GT_COLOR) for p in image[row - 1 : row + 2, col - 8 : col + 8].reshape(-1, 3))
    assert _shows(image[_bev_pixel(5.0, 17.25)], PRED_COLOR)
    hidden = draw_bev(gt, pred, pred_scores=np.array([0.1]), score_threshold=0.3)
    assert not _shows(hidden[_bev_pixel(5.0, 17.25)], PRED_COLOR)


def test_bev_forward_is_up_and_right_is_right():
    ahead = draw_bev(np.zeros((0, 9)), _box(0.0, 20.0))
    right = draw_bev(np.zeros((0, 9)), _box(20.0, 0.0, yaw=0.0))
    assert _shows(ahead[_bev_pixel(0.0, 22.25)], PRED_COLOR)  # front edge, above the ego vehicle
    assert _shows(right[_bev_pixel(22.25, 0.0)], PRED_COLOR)  # front edge, right of the ego vehicle


def test_ego_marker_points_along_plus_y():
    image = draw_bev(np.zeros((0, 9)), np.zeros((0, 9)))
    window = image[CENTER - 30 : CENTER + 31, CENTER - 30 : CENTER + 31]
    rows, cols = np.nonzero(np.abs(window.astype(int) - EGO_COLOR).max(-1) < 40)
    up, down = 30 - rows.min(), rows.max() - 30
    left, right = 30 - cols.min(), cols.max() - 30
    assert up >= 18 and up > down + 5 and up > max(left, right) + 5  # the apex is forward (+y), up
    assert abs(left - right) <= 1
    panel = image[:, 819:]
    for color in (GT_COLOR, PRED_COLOR, EGO_COLOR):  # the legend shows each style's colour
        assert (np.abs(panel.astype(int) - color).max(-1) < 10).any(), color


def test_higher_score_drawn_on_top():
    boxes = np.concatenate([_box(0.0, 15.0), _box(0.0, 15.0)])
    for labels, scores in (([0, 1], [0.4, 0.9]), ([1, 0], [0.9, 0.4])):
        image = draw_bev(np.zeros((0, 9)), boxes, pred_scores=np.array(scores), pred_labels=np.array(labels))
        assert _shows(image[_bev_pixel(0.0, 17.25)], CLASS_COLORS[1])  # truck 0.9 over car 0.4
        mosaic = _mosaic(192, 108, boxes, labels=np.array(labels), scores=np.array(scores))
        column = round(96 + 96 * 1.0 / (15.0 - 2.25))  # the right front edge at x = 1, depth y = 12.75
        edge = mosaic[40:70, column - 1 : column + 2].reshape(-1, 3)
        assert any(_shows(p, CLASS_COLORS[1]) for p in edge) and not any(
            _shows(p, CLASS_COLORS[0]) for p in edge
        )


def test_ground_truth_is_dashed_and_thinner_than_a_prediction_of_its_class():
    box, label = _box(0.0, 15.0, size=(8.0, 4.5, 1.6)), np.array([0])  # an 8 m wide front edge
    row, col = _bev_pixel(0.0, 17.25)
    for drawn_as in ("pred", "gt"):
        boxes = {"gt_boxes": box, "gt_labels": label} if drawn_as == "gt" else {}
        pred = np.zeros((0, 9)) if drawn_as == "gt" else box
        image = draw_bev(
            boxes.get("gt_boxes", np.zeros((0, 9))),
            pred,
            pred_labels=label if drawn_as == "pred" else None,
            gt_labels=boxes.get("gt_labels"),
        )
        edge = image[row - 4 : row + 5, col - 24 : col + 25]
        drawn = np.abs(edge.astype(int) - 30).max(-1) > 60  # off the background (grey 30)
        covered, width = drawn.any(0).mean(), drawn.sum(0).max()
        strongest = edge.reshape(-1, 3)[np.abs(edge.astype(int) - 30).max(-1).argmax()]
        assert (
            np.linalg.norm(_lab(CLASS_COLORS) - _lab([strongest]), axis=-1).argmin() == 0
        )  # the car's colour
        if drawn_as == "pred":
            pred_width = width
            assert covered == 1.0
        else:
            assert 0.3 < covered < 0.8 and width < pred_width  # gaps: dashed; and thinner


def test_palette_colours_are_far_apart_and_far_from_the_renderer_colours():
    palette = _lab(CLASS_COLORS)
    assert len(CLASS_COLORS) == len(CLASS_NAMES)
    pairwise = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(len(palette)) * 1e3
    rendered = _lab([spec.color for spec in CATEGORY_SPECS])
    to_renderer = np.linalg.norm(palette[:, None] - rendered[None], axis=-1)
    assert pairwise.min() > 30 and to_renderer.min() > 30  # CIELAB distance; 2.3 is just noticeable
    unlabelled = np.linalg.norm(_lab([PRED_COLOR, GT_COLOR])[:, None] - palette[None], axis=-1)
    assert unlabelled.min() > 30  # boxes drawn without labels cannot be taken for a class


def _title_band(mosaic: np.ndarray, top: int, left: int, width: int) -> tuple[int, int, int]:
    """(height, width, rightmost text pixel) of a camera's black title band on a grey tile."""
    black = (mosaic[top:, left : left + width] == 0).all(-1)
    height = int(np.argmin(black[:, 0]))
    band_width = int(np.argmin(black[0]))
    text = (mosaic[top : top + height, left : left + width] > 150).all(-1)
    return height, band_width, int(np.nonzero(text.any(0))[0].max())


@pytest.mark.parametrize("size", [(192, 108), (800, 450), (1600, 900)])
def test_camera_names_and_legend_are_never_cut(size):
    width, height = size
    mosaic = _mosaic(width, height, _box(0.0, 15.0), labels=np.array([2]), scores=np.array([0.5]))
    for r, row in enumerate(MOSAIC_LAYOUT):
        for c, name in enumerate(row):
            band_height, band_width, text_right = _title_band(mosaic, r * height, c * width, width)
            assert 0 < band_height < height / 4 and text_right < band_width < width, name
    legend_scale, columns, _, column, _ = legend_layout(
        [(name, (0, 0, 0), "fill") for name in ("prediction", "ground truth", *CLASS_NAMES)],
        camera_style(height)[0],
        3 * width,
    )
    assert columns * column <= 3 * width and legend_scale == camera_style(height)[0]
    strip = mosaic[2 * height :]
    for index, color in enumerate(CLASS_COLORS):  # the legend strip shows every class colour
        assert (strip == np.array(color, np.uint8)).all(-1).any(), CLASS_NAMES[index]
    assert not (strip[:, -2:] > 150).any()  # no text runs into the right edge


def test_text_grows_with_the_tile():
    heights = [
        _title_band(_mosaic(w, h, np.zeros((0, 9))), 0, 0, w)[0]
        for w, h in ((192, 108), (800, 450), (1600, 900))
    ]
    assert heights[0] < heights[1] < heights[2] and heights[2] >= 30
    assert [camera_style(h)[1] for h in (108, 450, 900)] == [1, 2, 3]  # line widths too


def test_captions_never_cover_one_another():
    taken = []
    for _ in range(12):  # twelve captions for one box: stacked and around it, or left out
        place_label(label_size("construction_vehicle 0.99", 0.5), (300, 300, 340, 320), (800, 600), taken)
    assert len(taken) >= 8
    assert not any(overlaps(a, b) for i, a in enumerate(taken) for b in taken[i + 1 :])


def test_camera_mosaic_draws_projected_boxes(dataset, val_infos, tmp_path):  # noqa: F811
    sample = val_infos["samples"][0]
    images = [cv2.imread(str(dataset.root / sample["cameras"][name]["path"])) for name in CAMERA_NAMES]
    lidar2img = np.array([sample["cameras"][name]["lidar2img"] for name in CAMERA_NAMES])
    keep = [i for i, name in enumerate(sample["gt"]["names"]) if name in CLASS_NAMES]
    boxes = np.asarray(sample["gt"]["boxes"])[keep]
    labels = np.array([CLASS_NAMES.index(sample["gt"]["names"][i]) for i in keep])
    scores = np.linspace(0.3, 0.9, len(boxes))
    mosaic = draw_camera_boxes(
        images,
        lidar2img,
        boxes,
        labels,
        tmp_path / "cameras.png",
        scores=scores,
        gt_boxes=boxes,
        gt_labels=labels,
    )
    height, width = images[0].shape[:2]
    assert mosaic.shape[0] > 2 * height and mosaic.shape[1:] == (3 * width, 3)
    assert (tmp_path / "cameras.png").is_file()
    cameras = mosaic[: 2 * height]
    assert (cameras != np.concatenate([np.concatenate(images[i : i + 3], 1) for i in (0, 3)], 0)).any()
    unlabelled = draw_camera_boxes(images, lidar2img, boxes)
    assert unlabelled.shape[0] > 2 * height  # a legend says that the boxes are predictions
    assert (np.abs(unlabelled[2 * height :].astype(int) - PRED_COLOR).max(-1) < 10).any()
