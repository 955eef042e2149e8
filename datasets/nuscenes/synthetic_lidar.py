"""A ray-cast LIDAR_TOP sweep of the synthetic world (ground plane plus boxes), written as real `.pcd.bin`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 32 beams spread over the elevation range of the real nuScenes HDL-32E.
BEAM_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)
MAX_RANGE = 70.0
#: The physical surface lies this far inside the annotated box, so every box return counts as inside it.
SURFACE_INSET = 0.03
RANGE_NOISE = 0.01


@dataclass(frozen=True)
class LidarSweep:
    """Points (N, 5) float32 in the lidar frame [x, y, z, intensity, ring] and per-box visibility (K,)
    in [0, 1]
    (rays whose first return is the box / rays that cross the box)."""

    points: np.ndarray
    visibility: np.ndarray


def beam_directions(num_azimuths: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (32, A, 3) in the lidar frame (A = ``num_azimuths`` from -pi) and rings (32, A)."""
    elevation = np.deg2rad(BEAM_ELEVATIONS_DEG)[:, None]
    azimuth = np.linspace(-np.pi, np.pi, num_azimuths, endpoint=False)[None, :]
    directions = np.stack(
        np.broadcast_arrays(
            np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)
        ),
        -1,
    )
    rings = np.broadcast_to(np.arange(len(BEAM_ELEVATIONS_DEG))[:, None], directions.shape[:2])
    return directions, rings.astype(np.float64)


def _azimuth_columns(corners_lidar: np.ndarray, num_azimuths: int) -> np.ndarray:
    """Azimuth column indices covering a box given its corners (8, 3) in the lidar frame."""
    center_angle = np.arctan2(*corners_lidar[:, :2].mean(0)[::-1])
    relative = np.mod(np.arctan2(corners_lidar[:, 1], corners_lidar[:, 0]) - center_angle + np.pi, 2 * np.pi)
    low, high = center_angle + relative.min() - np.pi, center_angle + relative.max() - np.pi
    step = 2 * np.pi / num_azimuths
    first, last = np.floor((low + np.pi) / step) - 1, np.ceil((high + np.pi) / step) + 1
    return np.mod(np.arange(first, last + 1), num_azimuths).astype(np.int64)


def _ray_box_entry(
    origin: np.ndarray, directions: np.ndarray, center: np.ndarray, size: np.ndarray, yaw: float
) -> np.ndarray:
    """Entry distance (R,) of rays from ``origin`` (3,) along ``directions`` (R, 3) into an upright box
    (centre (3,), size w, l, h (3,), yaw), shrunk by SURFACE_INSET; inf where a ray misses."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])  # box -> frame
    origin_local = (origin - center) @ rotation
    directions_local = directions @ rotation
    directions_local[np.abs(directions_local) < 1e-12] = 1e-12
    half = (np.array([size[1], size[0], size[2]]) / 2 - SURFACE_INSET).clip(min=0.02)
    t_low = (-half - origin_local) / directions_local
    t_high = (half - origin_local) / directions_local
    t_near = np.minimum(t_low, t_high).max(-1)
    t_far = np.maximum(t_low, t_high).min(-1)
    return np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)


def sweep(
    lidar2ego: np.ndarray,
    centers: np.ndarray,
    sizes: np.ndarray,
    yaws: np.ndarray,
    corners_lidar: np.ndarray,
    directions: np.ndarray,
    rings: np.ndarray,
    rng: np.random.Generator,
) -> LidarSweep:
    """Cast ``directions`` (32, A, 3, lidar frame) against the ground (ego z = 0) and K boxes given in the ego
    frame (centres (K, 3), sizes (K, 3) w, l, h, yaws (K,); corners (K, 8, 3) in the lidar frame select the
    azimuths each box can be hit from). Returns points in the lidar frame."""
    origin = lidar2ego[:3, 3]
    directions_ego = directions @ lidar2ego[:3, :3].T
    with np.errstate(divide="ignore"):
        t_ground = np.where(directions_ego[..., 2] < 0, -origin[2] / directions_ego[..., 2], np.inf)
    t_boxes = np.full((*t_ground.shape, len(centers)), np.inf)
    for k in range(len(centers)):
        columns = _azimuth_columns(corners_lidar[k], directions.shape[1])
        t_boxes[:, columns, k] = _ray_box_entry(
            origin, directions_ego[:, columns], centers[k], sizes[k], yaws[k]
        )
    t_all = np.concatenate([t_ground[..., None], t_boxes], -1).reshape(-1, len(centers) + 1)
    first = np.argmin(t_all, axis=1)
    distance = t_all[np.arange(len(t_all)), first]
    keep = distance < MAX_RANGE
    crossing = np.isfinite(t_all[:, 1:]).sum(0)
    first_hits = np.bincount(first[keep], minlength=t_all.shape[1])[1:]
    visibility = np.where(crossing > 0, first_hits / np.maximum(crossing, 1), 0.0)
    noise = np.clip(rng.normal(0.0, RANGE_NOISE, keep.sum()), -1.5 * RANGE_NOISE, 1.5 * RANGE_NOISE)
    xyz = directions.reshape(-1, 3)[keep] * (distance[keep] + noise)[:, None]
    on_box = first[keep] > 0
    intensity = np.where(on_box, rng.uniform(20, 90, len(xyz)), rng.uniform(1, 12, len(xyz)))
    points = np.concatenate([xyz, intensity[:, None], rings.reshape(-1)[keep][:, None]], 1).astype(np.float32)
    return LidarSweep(points=points, visibility=visibility)
