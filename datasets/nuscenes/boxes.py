"""3D boxes as (K, 9) arrays and their exact conversion to and from the nuScenes global frame.

A box row is ``[x, y, z, w, l, h, yaw, vx, vy]`` in the lidar frame:

- ``x, y, z``: box centre (not bottom centre), metres.
- ``w, l, h``: size as in nuScenes ``size``; ``l`` lies along the box's local x axis (its front).
- ``yaw``: heading of the local x axis, counter-clockwise from lidar +x towards lidar +y, radians.
- ``vx, vy``: velocity in m/s.

nuScenes boxes are upright in the global frame, while LIDAR_TOP is tilted (about 2 degrees on a real
keyframe), so a yaw-only box in the lidar frame cannot be the exact rotated box. Heading and velocity are
therefore stored as the lidar-frame (x, y) coordinates of the *global horizontal* vector, a linear map that is
exactly invertible: converting a ground-truth box to the lidar frame and back gives the official
evaluation the same global yaw and velocity (to float precision). The box centre is transformed
exactly. Only the tilt of the box's corners in the lidar frame is lost (on a real keyframe, corner
errors of 10-20 cm for cars and trucks).
"""

from __future__ import annotations

import numpy as np
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

BOX_DIM = 9


def check_boxes(boxes: np.ndarray, what: str) -> np.ndarray:
    """``boxes`` as float64 (K, 9); ValueError naming ``what`` if the shape or the values are bad."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != BOX_DIM:
        raise ValueError(f"{what}: expected boxes of shape (K, {BOX_DIM}), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: boxes contain NaN or infinite values")
    if np.any(array[:, 3:6] <= 0):
        raise ValueError(f"{what}: box sizes w, l, h must be > 0")
    return array


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners (K, 8, 3) of (K, 9) boxes, in the devkit's order (first four face forward)."""
    boxes = check_boxes(boxes, "box_corners")
    corners = [
        Box(box[:3], box[3:6], Quaternion(axis=(0.0, 0.0, 1.0), angle=box[6])).corners().T for box in boxes
    ]
    return np.stack(corners) if corners else np.zeros((0, 8, 3))


def _horizontal_to_lidar_xy(lidar2global: np.ndarray, vectors_global_xy: np.ndarray) -> np.ndarray:
    """Lidar (x, y) of global horizontal vectors (K, 2) -> (K, 2)."""
    return vectors_global_xy @ lidar2global[:2, :2]


def _lidar_xy_to_horizontal(lidar2global: np.ndarray, vectors_lidar_xy: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_horizontal_to_lidar_xy`: global horizontal vectors (K, 2) -> (K, 2)."""
    return vectors_lidar_xy @ np.linalg.inv(lidar2global[:2, :2])


def global_boxes_to_lidar(
    centers: np.ndarray,
    sizes: np.ndarray,
    rotations: np.ndarray,
    velocities: np.ndarray,
    lidar2global: np.ndarray,
) -> np.ndarray:
    """Global boxes -> (K, 9) lidar-frame rows.

    Args:
        centers: (K, 3) global box centres.
        sizes: (K, 3) w, l, h.
        rotations: (K, 4) global quaternions w, x, y, z.
        velocities: (K, 2) global vx, vy (NaN allowed; it stays NaN).
        lidar2global: (4, 4) rigid transform of the sample's LIDAR_TOP keyframe.
    """
    count = len(centers)
    headings = np.array([quaternion_yaw(Quaternion(q)) for q in rotations]).reshape(count)
    heading_xy = _horizontal_to_lidar_xy(lidar2global, np.stack([np.cos(headings), np.sin(headings)], 1))
    centers_h = np.concatenate(
        [np.asarray(centers, dtype=np.float64).reshape(count, 3), np.ones((count, 1))], 1
    )
    centers_lidar = (centers_h @ np.linalg.inv(lidar2global).T)[:, :3]
    velocities_lidar = _horizontal_to_lidar_xy(
        lidar2global, np.asarray(velocities, dtype=np.float64).reshape(count, 2)
    )
    yaws = np.arctan2(heading_xy[:, 1], heading_xy[:, 0])
    return np.concatenate(
        [
            centers_lidar,
            np.asarray(sizes, dtype=np.float64).reshape(count, 3),
            yaws[:, None],
            velocities_lidar,
        ],
        1,
    )


def lidar_boxes_to_global(
    boxes: np.ndarray, lidar2global: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(K, 9) lidar-frame rows -> global upright boxes: centres (K, 3), sizes (K, 3), quaternions wxyz (K, 4),
    velocities (K, 2). Exact inverse of :func:`global_boxes_to_lidar` for upright boxes."""
    boxes = check_boxes(boxes, "lidar_boxes_to_global")
    count = len(boxes)
    centers = (np.concatenate([boxes[:, :3], np.ones((count, 1))], 1) @ lidar2global.T)[:, :3]
    heading = _lidar_xy_to_horizontal(lidar2global, np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6])], 1))
    yaws = np.arctan2(heading[:, 1], heading[:, 0])
    rotations = np.stack([np.cos(yaws / 2), np.zeros(count), np.zeros(count), np.sin(yaws / 2)], 1)
    velocities = _lidar_xy_to_horizontal(lidar2global, boxes[:, 7:9])
    return centers, boxes[:, 3:6].copy(), rotations, velocities
