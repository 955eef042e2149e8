"""Renders a synthetic camera image: sky, a textured road on the ground plane and filled 3D boxes.

Each box face is filled with its class colour (front face lighter, back face darker, sides shaded by
a fixed sun) after back-face culling and clipping at the near plane, painted far to near, through the
camera's own pose and intrinsics, so a camera-only detector can learn classes, positions and headings.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datasets.nuscenes.synthetic_world import (
    CENTER_LINE,
    DASHED_LINES,
    PARKING_BANDS,
    ROAD_EDGES,
    SIDEWALK_BANDS,
    SOLID_LINES,
    Road,
)

NEAR_PLANE = 0.1
FOG_DISTANCE = 120.0
_SUBPIXEL_BITS = 4
_SKY_HORIZON = np.array([235.0, 225.0, 215.0], np.float32)
_SKY_ZENITH = np.array([215.0, 150.0, 85.0], np.float32)
_SHADOW = np.array([40.0, 40.0, 45.0])
_SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
# Lateral bands of the ground, right to left: grass, sidewalk, parking, bike lane, road, parking, sidewalk,
# grass (``np.searchsorted(_BAND_EDGES, d)`` indexes ``_BAND_COLORS``).
_BAND_EDGES = np.array(
    [
        SIDEWALK_BANDS[0][0],
        PARKING_BANDS[0][0],
        PARKING_BANDS[0][1],
        ROAD_EDGES[0],
        ROAD_EDGES[1],
        SIDEWALK_BANDS[1][0],
        SIDEWALK_BANDS[1][1],
    ]
)
_BAND_COLORS = np.array(
    [
        (70, 120, 85),
        (170, 175, 180),
        (100, 100, 104),
        (75, 80, 125),
        (82, 82, 86),
        (100, 100, 104),
        (170, 175, 180),
        (70, 120, 85),
    ],
    np.float32,
)

# Faces as corner indices of the devkit corner order (0-3 front x+, 4-7 back x-; 0,1,4,5 top).
_FACES = ((0, 1, 2, 3), (5, 4, 7, 6), (4, 0, 3, 7), (1, 5, 6, 2), (4, 5, 1, 0), (3, 2, 6, 7))
_FACE_NORMALS_LOCAL = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
_FRONT, _BACK = 0, 1


@dataclass(frozen=True)
class CameraRays:
    """Per-pixel geometry of one camera, fixed while the ego drives on flat ground, at half resolution.

    ``ground_ego`` (P, 2): ego-frame xy of the ground seen by the P pixels ``ground_index`` (flat indices
    into the half-resolution image); ``fog`` (P, 1) blend weight towards the horizon colour; ``sky``
    (h, w, 3) float32 sky colours; ``image_size`` the full (width, height).
    """

    ground_ego: np.ndarray
    ground_index: np.ndarray
    fog: np.ndarray
    sky: np.ndarray
    image_size: tuple[int, int]


def camera_rays(cam2ego: np.ndarray, intrinsic: np.ndarray, image_size: tuple[int, int]) -> CameraRays:
    """Precompute :class:`CameraRays` for a camera with pose ``cam2ego`` (4, 4) and ``intrinsic`` (3, 3)."""
    width, height = (image_size[0] + 1) // 2, (image_size[1] + 1) // 2
    u, v = np.meshgrid(
        (np.arange(width) + 0.5) * image_size[0] / width, (np.arange(height) + 0.5) * image_size[1] / height
    )
    pixels = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    rays = pixels @ np.linalg.inv(intrinsic).T @ cam2ego[:3, :3].T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    origin = cam2ego[:3, 3]
    with np.errstate(divide="ignore"):
        t_ground = np.where(rays[:, 2] < 0, -origin[2] / rays[:, 2], np.inf)
    ground = t_ground < FOG_DISTANCE
    elevation = np.clip(rays[:, 2], 0.0, 1.0)[:, None] ** 0.6
    sky = ((1 - elevation) * _SKY_HORIZON + elevation * _SKY_ZENITH).reshape(height, width, 3)
    fog = (np.clip(t_ground[ground] / FOG_DISTANCE, 0.0, 1.0)[:, None] ** 0.8).astype(np.float32)
    ground_ego = origin[:2] + rays[ground, :2] * t_ground[ground, None]
    return CameraRays(ground_ego, np.flatnonzero(ground), fog, sky.astype(np.float32), tuple(image_size))


def _hash_noise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [-1, 1) per cell (a, b) (float arrays of whole numbers)."""
    hashed = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663)
    return (hashed & 255).astype(np.float32) / 128.0 - 1.0


def _ground_colors(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """BGR colours (P, 3) of ground points with road coordinates ``s``, ``d`` (P,)."""
    band = np.searchsorted(_BAND_EDGES, d)
    colors = _BAND_COLORS[band]
    on_sidewalk = (band == 1) | (band == 6)
    colors[on_sidewalk & (np.mod(s, 1.5) < 0.06)] *= 0.8
    dashed = (np.abs(d[:, None] - np.array(DASHED_LINES)) < 0.08).any(1) & (np.mod(s, 9.0) < 3.0)
    solid = (np.abs(d[:, None] - np.array(SOLID_LINES)) < 0.08).any(1)
    colors[dashed | solid] = (225.0, 225.0, 225.0)
    colors[np.abs(np.abs(d - CENTER_LINE) - 0.1) < 0.06] = (40.0, 195.0, 230.0)
    noise = _hash_noise(np.floor(s * 2.0), np.floor(d * 2.0))
    return colors * (1.0 + 0.06 * noise[:, None]).astype(np.float32)


def render_background(rays: CameraRays, road: Road, ego2global: np.ndarray, ego_s: float) -> np.ndarray:
    """BGR uint8 image (H, W, 3): sky and the textured ground seen from the ego pose ``ego2global`` (4, 4).

    The ground is shaded at half resolution and upsampled, which keeps generation fast.
    """
    image = rays.sky.copy()
    ground_global = rays.ground_ego @ ego2global[:2, :2].T + ego2global[:2, 3]
    s, d = road.coordinates(ground_global, ego_s)
    flat = image.reshape(-1, 3)
    flat[rays.ground_index] = (1 - rays.fog) * _ground_colors(s, d) + rays.fog * _SKY_HORIZON
    height, width = rays.image_size[1], rays.image_size[0]
    return cv2.resize(cv2.convertScaleAbs(image), (width, height), interpolation=cv2.INTER_LINEAR)


def _clip_near(polygon: np.ndarray) -> np.ndarray:
    """Clip a camera-frame polygon (N, 3) to z >= NEAR_PLANE (Sutherland-Hodgman); returns (M, 3)."""
    out = []
    for current, following in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        inside_current, inside_following = current[2] >= NEAR_PLANE, following[2] >= NEAR_PLANE
        if inside_current:
            out.append(current)
        if inside_current != inside_following:
            alpha = (NEAR_PLANE - current[2]) / (following[2] - current[2])
            out.append(current + alpha * (following - current))
    return np.array(out).reshape(-1, 3)


def _fill(image: np.ndarray, polygon_cam: np.ndarray, intrinsic: np.ndarray, color: np.ndarray) -> None:
    polygon = _clip_near(polygon_cam)
    if len(polygon) < 3:
        return
    pixels = polygon @ intrinsic.T
    pixels = pixels[:, :2] / pixels[:, 2:3]
    points = np.round(pixels * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(image, [points], color.tolist(), lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)


def _may_be_in_view(corners: np.ndarray, intrinsic: np.ndarray, width: int, height: int) -> bool:
    """False only if a box (corners (8, 3), camera frame) is certainly outside the image."""
    in_front = corners[:, 2] >= NEAR_PLANE
    if not in_front.any():
        return False
    if not in_front.all():
        return True
    pixels = corners @ intrinsic.T
    pixels = pixels[:, :2] / pixels[:, 2:3]
    return bool(
        pixels[:, 0].max() >= 0
        and pixels[:, 0].min() < width
        and pixels[:, 1].max() >= 0
        and pixels[:, 1].min() < height
    )


def draw_boxes(
    image: np.ndarray,
    corners_cam: np.ndarray,
    rotations_cam: np.ndarray,
    colors: np.ndarray,
    sun_cam: np.ndarray,
    intrinsic: np.ndarray,
) -> None:
    """Paint boxes into ``image`` (H, W, 3) in place, far to near.

    Args:
        corners_cam: (K, 8, 3) box corners in the camera frame (devkit corner order).
        rotations_cam: (K, 3, 3) box -> camera rotations (for the face normals).
        colors: (K, 3) BGR class colours.
        sun_cam: (3,) unit direction towards the sun in the camera frame.
        intrinsic: (3, 3) camera matrix.
    """
    height, width = image.shape[:2]
    order = np.argsort(-np.linalg.norm(corners_cam.mean(1), axis=1))
    for k in order:
        corners = corners_cam[k]
        if not _may_be_in_view(corners, intrinsic, width, height):
            continue
        _fill(image, corners[[2, 3, 7, 6]], intrinsic, _SHADOW)  # contact shadow on the road
        normals = _FACE_NORMALS_LOCAL @ rotations_cam[k].T
        for face_index, face in enumerate(_FACES):
            polygon = corners[list(face)]
            if normals[face_index] @ polygon.mean(0) >= 0:
                continue
            shade = 0.55 + 0.45 * max(float(normals[face_index] @ sun_cam), 0.0)
            color = colors[k] * shade
            if face_index == _FRONT:
                color = 0.55 * color + 0.45 * 255.0
            elif face_index == _BACK:
                color = 0.6 * color
            _fill(image, polygon, intrinsic, color)


def sun_direction(global2cam: np.ndarray) -> np.ndarray:
    """Unit sun direction (3,) in a camera frame given the global -> camera transform (4, 4)."""
    return global2cam[:3, :3] @ _SUN
