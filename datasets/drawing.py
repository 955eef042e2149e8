"""Drawing primitives shared by the pictures of detections (COCO and nuScenes): a font size that follows
the picture's size, text labels on bands placed where they cover no other label, and outlined (optionally
dashed) lines. Images are uint8 (H, W, 3); colours are in the image's own channel order."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Height in pixels of a capital letter at font scale 1.
_CAP_HEIGHT = cv2.getTextSize("H", FONT, 1.0, 1)[0][1]
_SUBPIXEL_BITS = 4
HALO_COLOR = (0, 0, 0)

#: An axis-aligned rectangle (x1, y1, x2, y2) in pixels, corners inclusive.
Rect = tuple[int, int, int, int]


def font_scale(text_height: float) -> float:
    """The OpenCV font scale of text whose capitals are ``text_height`` pixels tall (at least 6)."""
    return max(6.0, text_height) / _CAP_HEIGHT


def text_thickness(scale: float) -> int:
    """Stroke width of text at ``scale``: 1 pixel up to about 20 px tall capitals, then thicker."""
    return max(1, round(scale * 1.6))


def label_size(text: str, scale: float) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` at ``scale`` on its band (text plus padding)."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, text_thickness(scale))
    pad = max(1, round(height * 0.25))
    return width + 2 * pad, height + baseline + 2 * pad


def overlaps(a: Rect, b: Rect) -> bool:
    """Whether two rectangles share a pixel."""
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def place_label(
    size: tuple[int, int],
    anchor: Rect,
    bounds: tuple[int, int],
    taken: list[Rect],
    clear_of: Sequence[Rect] = (),
) -> Rect | None:
    """Where a label band of ``size`` (width, height) goes next to ``anchor`` (the thing it names) inside
    an image of ``bounds`` (width, height) without covering any rectangle in ``taken``; the chosen
    rectangle is appended to ``taken``. Positions around the anchor are tried in order (above, below,
    beside, stacked further above, inside), first those also clear of ``clear_of`` (e.g. other boxes),
    then any; None when every position covers a taken label (the label is then left out)."""
    width, height = size
    x1, y1, x2, y2 = anchor
    corners = [(x1, y1 - height), (x1, y2 + 1), (x2 - width + 1, y1 - height), (x2 - width + 1, y2 + 1)]
    corners += [(x2 + 1, y1), (x1 - width, y1), (x1, y1 + 1)]
    corners += [(x1, y1 - height * k) for k in range(2, 6)] + [(x1, y1 + 1 + height * k) for k in range(1, 5)]
    candidates = []
    for x, y in corners:
        x = int(min(max(x, 0), max(bounds[0] - width, 0)))
        y = int(min(max(y, 0), max(bounds[1] - height, 0)))
        candidates.append((x, y, x + width - 1, y + height - 1))
    rects = np.array(candidates).reshape(-1, 1, 4)
    for avoid in (list(taken) + list(clear_of), taken):
        others = np.array(avoid, dtype=np.int64).reshape(1, -1, 4)
        covers = (
            (rects[..., 0] <= others[..., 2])
            & (others[..., 0] <= rects[..., 2])
            & (rects[..., 1] <= others[..., 3])
            & (others[..., 1] <= rects[..., 3])
        ).any(1)
        if not covers.all():
            rect = candidates[int(np.argmin(covers))]
            taken.append(rect)
            return rect
    return None


def draw_label(
    image: np.ndarray,
    text: str,
    rect: Rect,
    scale: float,
    color: tuple[int, int, int],
    band: tuple[int, int, int] = (0, 0, 0),
) -> None:
    """``text`` in ``color`` on a filled ``band`` rectangle ``rect`` (from ``place_label``/``label_size``)."""
    thickness = text_thickness(scale)
    (_, height), _ = cv2.getTextSize(text, FONT, scale, thickness)
    pad = max(1, round(height * 0.25))
    cv2.rectangle(image, rect[:2], rect[2:], band, -1)
    cv2.putText(
        image, text, (rect[0] + pad, rect[1] + pad + height), FONT, scale, color, thickness, cv2.LINE_AA
    )


def _dashes(start: np.ndarray, end: np.ndarray, dash: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The drawn pieces of a dashed segment: dashes of length ``dash`` separated by gaps of ``dash``."""
    length = float(np.linalg.norm(end - start))
    if length <= dash:
        return [(start, end)]
    count = max(1, round((length + dash) / (2 * dash)))  # whole dashes that start and end the segment
    step = (end - start) / max(2 * count - 1, 1)
    return [(start + 2 * i * step, start + (2 * i + 1) * step) for i in range(count)]


def draw_segments(
    image: np.ndarray,
    segments: Sequence[tuple[np.ndarray, np.ndarray]],
    color: tuple[int, int, int],
    thickness: int,
    dash: float | None = None,
    halo: bool = True,
) -> None:
    """Anti-aliased segments ((x, y) float pixel pairs), dashed with dashes of ``dash`` pixels when given,
    each outlined by a dark halo (one pixel wider on each side) so that it reads on any background."""
    pieces = [piece for a, b in segments for piece in (_dashes(a, b, dash) if dash else [(a, b)])]
    fixed = np.round(np.array(pieces, dtype=np.float64).reshape(-1, 2, 2) * 2**_SUBPIXEL_BITS)
    points = fixed.clip(-(2**30), 2**30).astype(np.int64).tolist()
    passes = ((HALO_COLOR, thickness + 2), (color, thickness)) if halo else ((color, thickness),)
    for pass_color, pass_thickness in passes:
        for a, b in points:
            cv2.line(image, tuple(a), tuple(b), pass_color, pass_thickness, cv2.LINE_AA, shift=_SUBPIXEL_BITS)
