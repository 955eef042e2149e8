"""(K, 9) lidar-frame boxes go to the global frame and back exactly in everything the evaluation reads."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from datasets.nuscenes.boxes import global_boxes_to_lidar, lidar_boxes_to_global

angles = st.floats(-np.pi, np.pi)
tilts = st.floats(-0.05, 0.05)


@settings(max_examples=60, deadline=None)
@given(ego_yaw=angles, tilt_x=tilts, tilt_y=tilts, box_yaw=angles, seed=st.integers(0, 2**16))
def test_global_lidar_round_trip_keeps_centre_yaw_and_velocity(ego_yaw, tilt_x, tilt_y, box_yaw, seed):
    rng = np.random.default_rng(seed)
    lidar_rotation = (
        Quaternion(axis=(0, 0, 1), angle=ego_yaw)
        * Quaternion(axis=(1, 0, 0), angle=tilt_x)
        * Quaternion(axis=(0, 1, 0), angle=tilt_y)
    )
    lidar2global = transform_matrix(rng.uniform(-1000, 1000, 3), lidar_rotation)
    centers = rng.uniform(-50, 50, (3, 3))
    sizes = rng.uniform(0.3, 12, (3, 3))
    rotations = np.array([Quaternion(axis=(0, 0, 1), angle=box_yaw + k).elements for k in range(3)])
    velocities = rng.normal(0, 5, (3, 2))
    boxes = global_boxes_to_lidar(centers, sizes, rotations, velocities, lidar2global)
    back_centers, back_sizes, back_rotations, back_velocities = lidar_boxes_to_global(boxes, lidar2global)
    assert np.allclose(back_centers, centers, atol=1e-9) and np.allclose(back_sizes, sizes)
    assert np.allclose(back_velocities, velocities, atol=1e-9)
    yaw_errors = [
        np.angle(np.exp(1j * (quaternion_yaw(Quaternion(a)) - quaternion_yaw(Quaternion(b)))))
        for a, b in zip(back_rotations, rotations, strict=True)
    ]
    assert np.max(np.abs(yaw_errors)) < 1e-9


def test_untilted_lidar_gives_plain_relative_yaw():
    lidar2global = transform_matrix(np.array([10.0, 5.0, 1.8]), Quaternion(axis=(0, 0, 1), angle=0.5))
    rotation = Quaternion(axis=(0, 0, 1), angle=1.25).elements
    boxes = global_boxes_to_lidar(
        np.array([[12.0, 5.0, 0.9]]),
        np.array([[2.0, 4.5, 1.7]]),
        rotation[None],
        np.array([[1.0, 0.0]]),
        lidar2global,
    )
    assert np.isclose(boxes[0, 6], 0.75)
    assert np.allclose(boxes[0, 7:9], [np.cos(0.5), -np.sin(0.5)])
