"""Pictures of 3D detections: a bird's-eye view of ground truth vs predictions, and the six cameras with
projected boxes. Boxes are (K, 9) lidar-frame rows (boxes.py); images are BGR uint8 (OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.nuscenes.boxes import box_corners
from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES, PC_RANGE

GT_COLOR = (60, 200, 60)
PRED_COLOR = (60, 60, 230)
#: BGR colour per class index (the order of constants.CLASS_NAMES).
CLASS_COLORS = (
    (40, 40, 220),
    (40, 160, 240),
    (20, 220, 250),
    (200, 90, 30),
    (140, 60, 120),
    (200, 200, 200),
    (200, 40, 200),
    (60, 200, 60),
    (230, 200, 20),
    (0, 110, 255),
)
#: Mosaic layout of the six cameras: front row left to right, then back row.
MOSAIC_LAYOUT = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_NEAR = 0.1
_FONT = cv2.FONT_HERSHEY_SIMPLEX
EGO_COLOR = (240, 240, 240)


def draw_legend(
    image: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]], origin: tuple[int, int]
) -> None:
    """A legend box at ``origin`` (x, y, top left): one coloured swatch and its label per entry."""
    scale, line = 0.45, 18
    width = 28 + max(cv2.getTextSize(label, _FONT, scale, 1)[0][0] for label, _ in entries)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + width, y + 6 + line * len(entries)), (0, 0, 0), -1)
    for i, (label, color) in enumerate(entries):
        top = y + 6 + i * line
        cv2.rectangle(image, (x + 6, top + 2), (x + 18, top + 12), color, -1)
        cv2.putText(image, label, (x + 24, top + 12), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _write(image: np.ndarray, out_path: str | Path | None) -> np.ndarray:
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out_path), image):
            raise OSError(f"could not write image {out_path}")
    return image


def draw_bev(
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    out_path: str | Path | None = None,
    pred_scores: np.ndarray | None = None,
    score_threshold: float = 0.3,
    points: np.ndarray | None = None,
    point_cloud_range: Sequence[float] = PC_RANGE,
    pixels_per_meter: float = 8.0,
) -> np.ndarray:
    """Top-down image (lidar +x up, +y left) of GT (green) and predicted (red) boxes with heading lines,
    range rings every 10 m (labelled), the ego vehicle (white triangle pointing forward) and a legend.

    Args:
        gt_boxes: (K, 9) ground truth. pred_boxes: (M, 9) predictions, drawn if ``pred_scores`` (M,) is None
            or the score is >= ``score_threshold``.
        points: optional (N, >= 2) lidar points drawn in grey.
    Returns the BGR image (H, W, 3) uint8, also written to ``out_path`` (PNG) when given.
    """
    x_min, y_min, _, x_max, y_max, _ = point_cloud_range
    height, width = round((x_max - x_min) * pixels_per_meter), round((y_max - y_min) * pixels_per_meter)
    image = np.full((height, width, 3), 30, np.uint8)

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack(
            [(y_max - xy[..., 1]) * pixels_per_meter, (x_max - xy[..., 0]) * pixels_per_meter], -1
        )

    center = to_pixels(np.zeros(2)).round().astype(int)
    for radius in range(10, int(max(x_max, y_max)) + 1, 10):
        pixels = int(radius * pixels_per_meter)
        cv2.circle(image, tuple(center.tolist()), pixels, (70, 70, 70), 1, cv2.LINE_AA)
        label_at = (int(center[0]) + 3, int(center[1]) - pixels + 14)
        cv2.putText(image, f"{radius} m", label_at, _FONT, 0.4, (120, 120, 120), 1, cv2.LINE_AA)
    ego = to_pixels(np.array([[2.5, 0.0], [-1.5, 1.2], [-1.5, -1.2]])).round().astype(np.int32)
    cv2.fillPoly(image, [ego], EGO_COLOR, cv2.LINE_AA)
    if points is not None:
        pixels = to_pixels(np.asarray(points)[:, :2]).round().astype(int)
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        image[pixels[inside, 1], pixels[inside, 0]] = (150, 150, 150)
    pred_boxes = np.asarray(pred_boxes).reshape(-1, 9)
    if pred_scores is not None:
        pred_boxes = pred_boxes[np.asarray(pred_scores).reshape(-1) >= score_threshold]
    for boxes, color, thickness in ((gt_boxes, GT_COLOR, 2), (pred_boxes, PRED_COLOR, 1)):
        corners = box_corners(np.asarray(boxes).reshape(-1, 9))
        for box_corner in corners:
            footprint = to_pixels(box_corner[[0, 1, 5, 4], :2])  # top face, front edge first
            cv2.polylines(
                image,
                [np.round(footprint * 16).astype(np.int32)],
                True,
                color,
                thickness,
                cv2.LINE_AA,
                shift=4,
            )
            center, front = footprint.mean(0), footprint[:2].mean(0)
            cv2.line(
                image,
                tuple(np.round(center * 16).astype(int).tolist()),
                tuple(np.round(front * 16).astype(int).tolist()),
                color,
                thickness,
                cv2.LINE_AA,
                shift=4,
            )
    draw_legend(
        image,
        [("ground truth", GT_COLOR), ("prediction", PRED_COLOR), ("ego (+x forward)", EGO_COLOR)],
        (8, 8),
    )
    return _write(image, out_path)


def _draw_projected_box(image: np.ndarray, corners: np.ndarray, lidar2img: np.ndarray, color: tuple) -> None:
    """Draw the 12 edges of one box (corners (8, 3), lidar frame), clipped at depth ``_NEAR``."""
    projected = np.concatenate([corners, np.ones((8, 1))], 1) @ lidar2img.T  # (8, 4): u*z, v*z, z, 1
    for i, j in (*_EDGES, (0, 2), (1, 3)):  # the front face gets a cross
        a, b = projected[i, :3], projected[j, :3]
        if a[2] < _NEAR and b[2] < _NEAR:
            continue
        if a[2] < _NEAR or b[2] < _NEAR:
            alpha = (_NEAR - a[2]) / (b[2] - a[2])
            clipped = a + alpha * (b - a)
            a, b = (clipped, b) if a[2] < _NEAR else (a, clipped)
        start, end = a[:2] / a[2], b[:2] / b[2]
        cv2.line(
            image,
            tuple(np.round(start * 16).astype(np.int64).clip(-(2**30), 2**30).tolist()),
            tuple(np.round(end * 16).astype(np.int64).clip(-(2**30), 2**30).tolist()),
            color,
            2,
            cv2.LINE_AA,
            shift=4,
        )


def draw_camera_boxes(
    images: Sequence[np.ndarray],
    lidar2img: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray | None = None,
    out_path: str | Path | None = None,
    camera_names: Sequence[str] = CAMERA_NAMES,
) -> np.ndarray:
    """Mosaic (2 rows x 3 cameras) of the six images with the boxes projected into each, and a legend of
    the class colours (with ``labels``) below it.

    Args:
        images: six BGR uint8 images (H, W, 3) in ``camera_names`` order.
        lidar2img: (6, 4, 4) lidar -> pixel matrices for those images (after any resize).
        boxes: (K, 9) lidar-frame boxes. labels: optional (K,) class indices selecting ``CLASS_COLORS``.
    Returns the mosaic (2H, 3W, 3) uint8, also written to ``out_path`` when given.
    """
    lidar2img = np.asarray(lidar2img, dtype=np.float64)
    if len(images) != len(camera_names) or lidar2img.shape != (len(camera_names), 4, 4):
        raise ValueError(
            f"need {len(camera_names)} images and lidar2img of shape ({len(camera_names)}, 4, 4), "
            f"got {len(images)} images and {lidar2img.shape}"
        )
    corners = box_corners(np.asarray(boxes).reshape(-1, 9))
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    drawn = {}
    for index, name in enumerate(camera_names):
        image = np.ascontiguousarray(images[index]).copy()
        for k, box_corner in enumerate(corners):
            color = GT_COLOR if labels is None else CLASS_COLORS[int(labels[k]) % len(CLASS_COLORS)]
            _draw_projected_box(image, box_corner, lidar2img[index], color)
        cv2.putText(image, name, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        drawn[name] = image
    mosaic = np.concatenate([np.concatenate([drawn[name] for name in row], 1) for row in MOSAIC_LAYOUT], 0)
    if labels is not None:
        entries = [(name, CLASS_COLORS[i % len(CLASS_COLORS)]) for i, name in enumerate(CLASS_NAMES)]
        strip = np.zeros((14 + 18 * ((len(entries) + 4) // 5), mosaic.shape[1], 3), np.uint8)
        column = mosaic.shape[1] // 5
        for i, entry in enumerate(entries):
            draw_legend(strip, [entry], (column * (i % 5), 18 * (i // 5)))
        mosaic = np.concatenate([mosaic, strip], 0)
    return _write(mosaic, out_path)


def denormalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Dataset images (N, 3, H, W), RGB normalized by ``mean``/``std`` (0-1 scale) -> N BGR uint8 images."""
    images = np.asarray(images, dtype=np.float32)
    rgb = (
        images.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) * 255 + np.asarray(mean, np.float32) * 255
    )
    return [cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR) for image in rgb]
