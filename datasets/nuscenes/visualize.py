"""Pictures of 3D detections: a bird's-eye view of ground truth vs predictions, and the six cameras with
projected boxes. Boxes are (K, 9) lidar-frame rows (boxes.py); images are BGR uint8 (OpenCV).

Predictions are solid lines in their class colour, captioned "class score", the higher scores drawn on
top; ground truth is dashed and thinner (in its class colour when its labels are given). Text sizes and
line widths follow the picture's size; captions never cover one another."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from datasets.drawing import (
    Rect,
    draw_label,
    draw_segments,
    font_scale,
    label_size,
    overlaps,
    place_label,
)
from datasets.nuscenes.boxes import box_corners
from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES, PC_RANGE

#: BGR colour per class index (the order of constants.CLASS_NAMES): a qualitative palette whose colours
#: are pairwise far apart in CIELAB and far from the colours the synthetic renderer paints the objects
#: (synthetic_world.CATEGORY_SPECS), so that predictions never blend into the objects they mark.
CLASS_COLORS = (
    (255, 165, 0),  # car: azure
    (150, 0, 255),  # truck: rose
    (165, 255, 240),  # construction_vehicle: pale yellow
    (0, 255, 180),  # bus: lime
    (75, 105, 165),  # trailer: brown
    (255, 180, 210),  # barrier: lavender
    (210, 255, 15),  # motorcycle: aquamarine
    (75, 135, 105),  # bicycle: olive
    (165, 135, 255),  # pedestrian: salmon
    (30, 255, 0),  # traffic_cone: green
)
#: Colours of boxes drawn without labels (apart from the class colours too).
GT_COLOR = (255, 255, 255)
PRED_COLOR = (15, 165, 135)
BACKGROUND = (30, 30, 30)
EGO_COLOR = (240, 240, 240)
RING_COLOR = (80, 80, 80)
TEXT_COLOR = (235, 235, 235)
#: Mosaic layout of the six cameras: front row left to right, then back row.
MOSAIC_LAYOUT = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_NEAR = 0.1
#: Legend entry: (text, BGR colour, "fill" | "solid" | "dashed").
LegendEntry = tuple[str, tuple[int, int, int], str]


def camera_style(height: int) -> tuple[float, int]:
    """(font scale, line width) for a camera image ``height`` pixels tall: capitals 2.8 % of the height
    (at least 6 px), lines 1 px per 300 px of height (at least 1)."""
    return font_scale(0.028 * height), max(1, round(height / 300))


def _legend_swatch(image: np.ndarray, entry: LegendEntry, rect: Rect, line_width: int) -> None:
    _, color, style = entry
    x1, y1, x2, y2 = rect
    if style == "fill":
        cv2.rectangle(image, (x1, y1), (x2, y2), color, -1)
        return
    middle = (y1 + y2) / 2
    segment = (np.array([x1, middle]), np.array([x2, middle]))
    draw_segments(image, [segment], color, line_width, (x2 - x1) / 5 if style == "dashed" else None, False)


def legend_layout(
    entries: Sequence[LegendEntry], scale: float, width: int
) -> tuple[float, int, int, int, int]:
    """How ``entries`` fit in ``width`` pixels: (scale, columns, rows, column width, row height), the
    scale lowered until the widest entry fits whole."""
    while True:
        text_width = max(label_size(text, scale)[0] for text, _, _ in entries)
        row = label_size("Hg", scale)[1]
        column = text_width + 2 * row
        if column <= width or scale <= font_scale(0):
            break
        scale *= 0.9
    columns = max(1, min(len(entries), width // column))
    return scale, columns, -(-len(entries) // columns), column, row


def draw_legend(
    image: np.ndarray,
    entries: Sequence[tuple[str, tuple[int, int, int]] | LegendEntry],
    origin: tuple[int, int],
    scale: float = 0.45,
    width: int | None = None,
) -> None:
    """A legend on a black band at ``origin`` (x, y, top left): per entry a swatch (a filled square, a
    solid or a dashed line; entries without a style get a square) and its text, laid out in as many
    columns as ``width`` pixels hold (one column by default), never cut."""
    entries = [entry if len(entry) == 3 else (*entry, "fill") for entry in entries]
    if width is None:
        _, _, _, column, row = legend_layout(entries, scale, 2**30)
        columns, rows = 1, len(entries)
    else:
        scale, columns, rows, column, row = legend_layout(entries, scale, width)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + columns * column + row // 2, y + rows * row + row // 2), (0, 0, 0), -1)
    line_width = max(1, round(row / 8))
    for i, entry in enumerate(entries):
        left, top = x + row // 2 + column * (i // rows), y + row // 2 + row * (i % rows)
        _legend_swatch(image, entry, (left, top + row // 4, left + row, top + row - row // 4), line_width)
        text_left, (text_width, text_height) = left + row + row // 3, label_size(entry[0], scale)
        text_rect = (text_left, top, text_left + text_width - 1, top + text_height - 1)
        draw_label(image, entry[0], text_rect, scale, TEXT_COLOR)


def _write(image: np.ndarray, out_path: str | Path | None) -> np.ndarray:
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out_path), image):
            raise OSError(f"could not write image {out_path}")
    return image


def _colors(
    labels: np.ndarray | None, count: int, default: tuple[int, int, int]
) -> list[tuple[int, int, int]]:
    if labels is None:
        return [default] * count
    return [CLASS_COLORS[int(label) % len(CLASS_COLORS)] for label in labels]


def _bounds(points: np.ndarray) -> Rect:
    """The pixel rectangle around ``points`` (N, 2) (x, y)."""
    x1, y1 = np.floor(points.min(0)).astype(int)
    x2, y2 = np.ceil(points.max(0)).astype(int)
    return int(x1), int(y1), int(x2), int(y2)


def _caption(label: int | None, score: float | None) -> str:
    """The caption of one prediction: "class score", "class" or "score" ("" without either)."""
    name = None if label is None else CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else str(label)
    return " ".join(part for part in (name, None if score is None else f"{score:.2f}") if part)


def _predictions(
    boxes: np.ndarray, labels: np.ndarray | None, scores: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Predictions as arrays, sorted by ascending score (the last drawn on top); ValueError on a length
    mismatch."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    arrays = [None if a is None else np.asarray(a).reshape(-1) for a in (labels, scores)]
    for name, array in zip(("labels", "scores"), arrays, strict=True):
        if array is not None and len(array) != len(boxes):
            raise ValueError(f"{len(boxes)} predicted boxes but {len(array)} {name}")
    labels, scores = arrays
    if scores is None:
        return boxes, labels, scores
    order = np.argsort(scores, kind="stable")
    return boxes[order], None if labels is None else labels[order], scores[order]


def _legend_entries(pred_labels: bool, gt_labels: bool | None) -> list[LegendEntry]:
    """The styles (in their colour where boxes without labels get it) and, when any box has a label,
    the class colours; ``gt_labels`` None: no ground truth."""
    entries = [("prediction", TEXT_COLOR if pred_labels else PRED_COLOR, "solid")]
    if gt_labels is not None:
        entries.append(("ground truth", TEXT_COLOR if gt_labels else GT_COLOR, "dashed"))
    if pred_labels or gt_labels:
        entries += [(name, CLASS_COLORS[i], "fill") for i, name in enumerate(CLASS_NAMES)]
    return entries


def draw_bev(
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    out_path: str | Path | None = None,
    pred_scores: np.ndarray | None = None,
    score_threshold: float = 0.3,
    points: np.ndarray | None = None,
    pc_range: Sequence[float] = PC_RANGE,
    pixels_per_meter: float = 8.0,
    pred_labels: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Top-down image, lidar +y (the vehicle's forward) up and +x (its right) to the right, of ground
    truth (dashed) and predicted (solid, captioned "class score", higher scores on top) boxes with
    heading lines, range rings every 10 m (labelled where no box is), the ego vehicle (a triangle
    pointing forward) and, in a panel on the right, a legend.

    Args:
        gt_boxes: (K, 9) ground truth; ``gt_labels`` (K,) class indices colour them (else white).
        pred_boxes: (M, 9) predictions, drawn if ``pred_scores`` (M,) is None or the score is
            >= ``score_threshold``; ``pred_labels`` (M,) class indices colour them (else khaki).
        points: optional (N, >= 2) lidar points drawn in grey.
    Returns the BGR image (H, W + legend panel, 3) uint8, H and W the range at ``pixels_per_meter``,
    also written to ``out_path`` (PNG) when given.
    """
    x_min, y_min, _, x_max, y_max, _ = pc_range
    height, width = round((y_max - y_min) * pixels_per_meter), round((x_max - x_min) * pixels_per_meter)
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    scale, line_width = font_scale(1.4 * pixels_per_meter), max(1, round(pixels_per_meter / 5))

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return np.stack(
            [(xy[..., 0] - x_min) * pixels_per_meter, (y_max - xy[..., 1]) * pixels_per_meter], -1
        )

    if points is not None:
        pixels = to_pixels(np.asarray(points)[:, :2]).round().astype(int)
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        image[pixels[inside, 1], pixels[inside, 0]] = (150, 150, 150)
    center = to_pixels(np.zeros(2))
    radii = range(10, int(max(abs(v) for v in pc_range[:2] + pc_range[3:5])) + 1, 10)
    for radius in radii:
        cv2.circle(
            image,
            tuple(np.round(center * 16).astype(int).tolist()),
            round(radius * pixels_per_meter * 16),
            RING_COLOR,
            1,
            cv2.LINE_AA,
            shift=4,
        )
    ego = to_pixels(np.array([[0.0, 2.5], [1.2, -1.5], [-1.2, -1.5]]))  # apex forward, along +y
    cv2.fillPoly(image, [np.round(ego * 16).astype(np.int32)], EGO_COLOR, cv2.LINE_AA, shift=4)

    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 9)
    gt_labels = None if gt_labels is None else np.asarray(gt_labels).reshape(-1)
    pred_boxes, pred_labels, pred_scores = _predictions(pred_boxes, pred_labels, pred_scores)
    if pred_scores is not None:
        keep = pred_scores >= score_threshold
        pred_boxes, pred_scores = pred_boxes[keep], pred_scores[keep]
        pred_labels = None if pred_labels is None else pred_labels[keep]
    footprints = {}
    for kind, boxes, colors in (
        ("gt", gt_boxes, _colors(gt_labels, len(gt_boxes), GT_COLOR)),
        ("pred", pred_boxes, _colors(pred_labels, len(pred_boxes), PRED_COLOR)),
    ):
        footprints[kind] = [to_pixels(corner[[0, 1, 5, 4], :2]) for corner in box_corners(boxes)]
        for footprint, color in zip(footprints[kind], colors, strict=True):  # top face, front edge first
            edges = [(footprint[i], footprint[(i + 1) % 4]) for i in range(4)]
            edges.append((footprint.mean(0), footprint[:2].mean(0)))  # heading line
            if kind == "gt":
                draw_segments(image, edges, color, max(1, line_width - 1), 2.5 * line_width + 2, halo=False)
            else:
                draw_segments(image, edges, color, line_width, halo=True)

    box_rects = [_bounds(f) for kind in ("gt", "pred") for f in footprints[kind]]
    taken: list[Rect] = []
    ring_labels = []
    for radius in radii:  # each ring labelled where the label covers no box, else over boxes on its band
        text = f"{radius} m"
        label_width, label_height = label_size(text, scale)
        candidates = []
        for angle in np.radians(np.arange(60, 420, 15)):
            x, y = center + radius * pixels_per_meter * np.array([np.cos(angle), -np.sin(angle)])
            left, top = round(x - label_width / 2), round(y - label_height / 2)
            rect = (left, top, left + label_width - 1, top + label_height - 1)
            if rect[0] >= 0 and rect[1] >= 0 and rect[2] < width and rect[3] < height:
                candidates.append(rect)
        for avoid in (box_rects + taken, taken):
            clear = [rect for rect in candidates if not any(overlaps(rect, other) for other in avoid)]
            if clear:
                taken.append(clear[0])
                ring_labels.append((text, clear[0]))
                break
    pred_colors = _colors(pred_labels, len(pred_boxes), PRED_COLOR)
    captions = []
    for k in range(len(pred_boxes) - 1, -1, -1):  # the highest score chooses its place first
        label = None if pred_labels is None else int(pred_labels[k])
        text = _caption(label, None if pred_scores is None else float(pred_scores[k]))
        anchor = _bounds(footprints["pred"][k])
        rect = (
            place_label(label_size(text, scale), anchor, (width, height), taken, box_rects) if text else None
        )
        if rect is not None:
            captions.append((text, rect, pred_colors[k]))
    for text, rect in ring_labels:
        draw_label(image, text, rect, scale, (150, 150, 150), band=BACKGROUND)
    for text, rect, color in captions:
        draw_label(image, text, rect, scale, color)

    entries = _legend_entries(pred_labels is not None, gt_labels is not None)
    entries.append(("ego, forward (+y)", EGO_COLOR, "fill"))
    panel_scale, _, _, column, row = legend_layout(entries, scale, width)
    panel = np.zeros((height, column + row, 3), np.uint8)
    draw_legend(panel, entries, (0, row // 2), panel_scale)
    return _write(np.concatenate([image, panel], 1), out_path)


def _projected_edges(corners: np.ndarray, lidar2img: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 12 edges of one box (corners (8, 3), lidar frame) and a cross on its front face, as pixel
    segments clipped at depth ``_NEAR`` (edges wholly behind the camera left out)."""
    projected = np.concatenate([corners, np.ones((8, 1))], 1) @ lidar2img.T  # (8, 4): u*z, v*z, z, 1
    segments = []
    for i, j in (*_EDGES, (0, 2), (1, 3)):
        a, b = projected[i, :3], projected[j, :3]
        if a[2] < _NEAR and b[2] < _NEAR:
            continue
        if a[2] < _NEAR or b[2] < _NEAR:
            alpha = (_NEAR - a[2]) / (b[2] - a[2])
            clipped = a + alpha * (b - a)
            a, b = (clipped, b) if a[2] < _NEAR else (a, clipped)
        segments.append((a[:2] / a[2], b[:2] / b[2]))
    return segments


def draw_camera_boxes(
    images: Sequence[np.ndarray],
    lidar2img: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray | None = None,
    out_path: str | Path | None = None,
    camera_names: Sequence[str] = CAMERA_NAMES,
    scores: np.ndarray | None = None,
    gt_boxes: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
) -> np.ndarray:
    """Mosaic (2 rows x 3 cameras) of the six images with the predicted ``boxes`` projected into each
    (solid, outlined, captioned "class score", higher scores on top) and the optional ground truth
    (dashed, thinner), each camera's name on a dark band, and a legend strip below.

    Args:
        images: six BGR uint8 images (H, W, 3) in ``camera_names`` order.
        lidar2img: (6, 4, 4) lidar -> pixel matrices for those images (after any resize).
        boxes: (K, 9) predicted lidar-frame boxes; ``labels`` (K,) class indices selecting
            ``CLASS_COLORS`` (else all khaki) and ``scores`` (K,) for the captions and drawing order.
        gt_boxes: optional (G, 9) ground truth; ``gt_labels`` (G,) class indices colour it (else white).
    Returns the mosaic (2H + legend, 3W, 3) uint8, also written to ``out_path`` when given.
    """
    lidar2img = np.asarray(lidar2img, dtype=np.float64)
    if len(images) != len(camera_names) or lidar2img.shape != (len(camera_names), 4, 4):
        raise ValueError(
            f"need {len(camera_names)} images and lidar2img of shape ({len(camera_names)}, 4, 4), "
            f"got {len(images)} images and {lidar2img.shape}"
        )
    boxes, labels, scores = _predictions(boxes, labels, scores)
    gt = np.zeros((0, 9)) if gt_boxes is None else np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 9)
    gt_labels = None if gt_labels is None else np.asarray(gt_labels).reshape(-1)
    height, width = images[0].shape[:2]
    scale, line_width = camera_style(height)
    layers = (
        (
            box_corners(gt),
            _colors(gt_labels, len(gt), GT_COLOR),
            max(1, line_width - 1),
            3.0 * line_width + 3,
        ),
        (box_corners(boxes), _colors(labels, len(boxes), PRED_COLOR), line_width, None),
    )
    drawn = {}
    for index, name in enumerate(camera_names):
        image = np.ascontiguousarray(images[index]).copy()
        box_rects = []
        for corners, colors, thickness, dash in layers:
            box_rects.append([])
            for box_corner, color in zip(corners, colors, strict=True):
                segments = _projected_edges(box_corner, lidar2img[index])
                draw_segments(image, segments, color, thickness, dash)
                ends = np.array([end for segment in segments for end in segment]).reshape(-1, 2)
                box_rects[-1].append(_bounds(ends.clip(-1, [width, height])) if len(ends) else None)
        title_scale = min(scale, scale * (width - label_size("", scale)[0]) / label_size(name, scale)[0])
        taken = [(0, 0, *(np.array(label_size(name, title_scale)) - 1))]
        captions = []
        visible = [
            rect for rect in box_rects[0] + box_rects[1] if rect is not None and _on_image(rect, image)
        ]
        for k in range(len(boxes) - 1, -1, -1):  # the highest score chooses its place first
            text = _caption(None if labels is None else int(labels[k]), None if scores is None else scores[k])
            anchor = box_rects[1][k]
            if text and anchor is not None and _on_image(anchor, image):
                rect = place_label(label_size(text, scale), anchor, (width, height), taken, visible)
                if rect is not None:
                    captions.append((text, rect, layers[1][1][k]))
        for text, rect, color in captions:
            draw_label(image, text, rect, scale, color)
        draw_label(image, name, taken[0], title_scale, TEXT_COLOR)
        drawn[name] = image
    mosaic = np.concatenate([np.concatenate([drawn[name] for name in row], 1) for row in MOSAIC_LAYOUT], 0)
    entries = _legend_entries(labels is not None, None if gt_boxes is None else gt_labels is not None)
    legend_scale, _, rows, _, row = legend_layout(entries, scale, mosaic.shape[1])
    strip = np.zeros((rows * row + row // 2, mosaic.shape[1], 3), np.uint8)
    draw_legend(strip, entries, (0, 0), legend_scale, mosaic.shape[1])
    return _write(np.concatenate([mosaic, strip], 0), out_path)


def _on_image(rect: Rect, image: np.ndarray) -> bool:
    """Whether ``rect`` shares a pixel with ``image``."""
    return overlaps(rect, (0, 0, image.shape[1] - 1, image.shape[0] - 1))


def denormalize_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Dataset images (N, 3, H, W), RGB normalized by ``mean``/``std`` (0-1 scale) -> N BGR uint8 images."""
    images = np.asarray(images, dtype=np.float32)
    rgb = (
        images.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) * 255 + np.asarray(mean, np.float32) * 255
    )
    return [cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR) for image in rgb]
