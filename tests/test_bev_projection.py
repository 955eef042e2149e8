"""Pillar points and their projection into cameras: known pixels, visibility, devkit agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    PC_RANGE,
    camera_lidar2img,
    one_thread,  # noqa: F401 (autouse fixture)
    pinhole_intrinsics,
    ring_lidar2img,
)
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import view_points
from pyquaternion import Quaternion

from bev import bev_cell_centers, bev_pillar_points, project_to_cameras


def _project(points: list[list[float]], lidar2img: torch.Tensor, img_shape=IMG_SHAPE):
    pts = torch.tensor(points, dtype=torch.float32)[None, :, None, :]  # (1, Q, 1, 3)
    uv, visible = project_to_cameras(pts, lidar2img[None].float(), img_shape)
    pixels = uv[0, :, :, 0] * torch.tensor([img_shape[1], img_shape[0]])
    return pixels, visible[0, :, :, 0]  # (Ncam, Q, 2), (Ncam, Q)


def test_point_lands_on_expected_pixel_of_hand_built_camera():
    height, width = IMG_SHAPE
    focal = float(pinhole_intrinsics(IMG_SHAPE)[0, 0])
    lidar2img = camera_lidar2img(0.0, (0.0, 0.0, 1.6), IMG_SHAPE)[None]  # one camera looking along +x
    pixels, visible = _project(
        [[10.0, 0.0, 1.6], [10.0, -2.0, 1.6], [10.0, 0.0, 0.6], [-10.0, 0.0, 1.6], [10.0, 20.0, 1.6]],
        lidar2img,
    )
    expected = torch.tensor(
        [
            [width / 2, height / 2],  # straight ahead: image centre
            [width / 2 + focal * 2 / 10, height / 2],  # 2 m to the right
            [width / 2, height / 2 + focal * 1 / 10],  # 1 m lower
        ]
    )
    torch.testing.assert_close(pixels[0, :3], expected, atol=1e-4, rtol=0)
    assert visible[0].tolist() == [True, True, True, False, False]  # behind; far outside the image


def test_hand_built_ring_sees_each_direction_in_the_facing_camera():
    lidar2img = ring_lidar2img(num_cams=4)  # cameras facing +x, +y, -x, -y
    _, visible = _project(
        [[20.0, 0.0, 1.0], [0.0, 20.0, 1.0], [-20.0, 0.0, 1.0], [0.0, -20.0, 1.0]], lidar2img
    )
    assert torch.equal(visible, torch.eye(4, dtype=torch.bool))


def test_lidar2img_chain_matches_devkit_projection():
    """lidar -> ego -> global -> ego(cam time) -> cam -> pixels, against devkit's Box + view_points."""
    cs_cam = (
        [1.70079118954, 0.0159456324149, 1.51095763913],
        Quaternion([0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755]),
    )
    cs_lidar = (
        [0.943713, 0.0, 1.84023],
        Quaternion([0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817]),
    )
    ep_lidar = ([600.0, 1600.0, 0.0], Quaternion(axis=[0, 0, 1], angle=0.7))
    ep_cam = ([600.3, 1600.2, 0.0], Quaternion(axis=[0, 0, 1], angle=0.705))  # camera fires a bit later
    intrinsic = np.array(
        [
            [1266.417203046554, 0.0, 816.2670197447984],
            [0.0, 1266.417203046554, 491.50706579294757],
            [0.0, 0.0, 1.0],
        ]
    )

    def transform(translation, rotation):
        mat = np.eye(4)
        mat[:3, :3] = rotation.rotation_matrix
        mat[:3, 3] = translation
        return mat

    lidar2cam = (
        np.linalg.inv(transform(*cs_cam))
        @ np.linalg.inv(transform(*ep_cam))
        @ transform(*ep_lidar)
        @ transform(*cs_lidar)
    )
    viewpad = np.eye(4)
    viewpad[:3, :3] = intrinsic
    lidar2img = torch.from_numpy(viewpad @ lidar2cam)[None]

    points = [[1.5, 12.0, -0.5], [-4.0, 25.0, 0.8], [2.0, 8.0, -1.2]]  # lidar frame: +y is ego forward
    pixels, visible = _project(points, lidar2img, img_shape=(900, 1600))
    for i, point in enumerate(points):
        box = Box(point, [1.0, 1.0, 1.0], Quaternion())
        box.rotate(cs_lidar[1])
        box.translate(np.array(cs_lidar[0]))
        box.rotate(ep_lidar[1])
        box.translate(np.array(ep_lidar[0]))
        box.translate(-np.array(ep_cam[0]))
        box.rotate(ep_cam[1].inverse)
        box.translate(-np.array(cs_cam[0]))
        box.rotate(cs_cam[1].inverse)
        expected = view_points(box.center[:, None], intrinsic, normalize=True)[:2, 0]
        assert box.center[2] > 0 and bool(visible[0, i])
        np.testing.assert_allclose(pixels[0, i].double().numpy(), expected, atol=0.05)


def test_visibility_is_per_sample():
    rigs = torch.stack([ring_lidar2img(), ring_lidar2img(yaw_offset=0.5, shift=(3.0, -2.0))])
    pillars = bev_pillar_points(6, 6, PC_RANGE)[None].expand(2, -1, -1, -1)
    uv, visible = project_to_cameras(pillars, rigs, IMG_SHAPE)
    assert not torch.equal(visible[0], visible[1])
    for b in range(2):
        uv_b, visible_b = project_to_cameras(pillars[b : b + 1], rigs[b : b + 1], IMG_SHAPE)
        assert torch.equal(visible_b[0], visible[b])
        torch.testing.assert_close(uv_b[0], uv[b])


def test_pillar_heights_and_cell_centres():
    pillars = bev_pillar_points(2, 4, PC_RANGE, num_points_in_pillar=4)
    assert pillars.shape == (8, 4, 3)
    torch.testing.assert_close(pillars[0, :, 2], torch.tensor([-4.5, -13 / 6, 1 / 6, 2.5]))
    centres = bev_cell_centers(2, 4, PC_RANGE)
    # row i (y) major, column j (x) minor; cells 25.6 m wide in x, 51.2 m in y
    torch.testing.assert_close(centres[1], torch.tensor([-51.2 + 1.5 * 25.6, -51.2 + 25.6]))
    torch.testing.assert_close(centres[4], torch.tensor([-51.2 + 12.8, 25.6]))
    torch.testing.assert_close(pillars[..., :2], centres[:, None].expand(8, 4, 2))


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="pc_range"):
        bev_cell_centers(2, 2, (0.0, 0.0, 0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="lidar2img"):
        project_to_cameras(torch.zeros(2, 3, 1, 3), torch.zeros(1, 6, 4, 4), IMG_SHAPE)
    with pytest.raises(ValueError, match="points"):
        project_to_cameras(torch.zeros(2, 3, 3), torch.zeros(2, 6, 4, 4), IMG_SHAPE)
