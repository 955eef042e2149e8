"""PETR's geometric augmentations: resize / crop / flip of the images and rotation / scaling of the scene keep
every projected box corner on the pixel that shows it."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes_fixtures import SWEEPS_SPEC, sweeps_dataset  # noqa: F401

from datasets.nuscenes.augment import GlobalRotScale, ImageCrop, ResizeCropFlip, rotate_scale_scene
from datasets.nuscenes.boxes import box_corners
from datasets.nuscenes.dataset import NuScenesMultiViewDataset
from datasets.nuscenes.infos import infos_path, load_infos
from datasets.nuscenes.prev_frame import PrevFrame

#: Resized widths 272..320 >= 256: no zero columns (the original pads a too narrow image on the right).
TRAIN_CROP = ResizeCropFlip(
    final_size=(256, 96), resize_range=(0.85, 1.0), bot_pct_range=(0.0, 0.1), flip=True
)


@pytest.fixture(scope="module")
def infos(sweeps_dataset) -> dict:  # noqa: F811
    return load_infos(infos_path(sweeps_dataset.infos_dir, "mini_train"))


def _project(lidar2img: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels (..., 2) of lidar points (..., 3) through one (4, 4) matrix."""
    homogeneous = np.concatenate([points, np.ones((*points.shape[:-1], 1))], -1) @ lidar2img.T
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def _ramp(width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 image whose pixels hold the coordinates (u, v) of their own centres."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return np.stack([u, v, np.zeros_like(u)], -1)


@pytest.mark.parametrize(
    "crop",
    [
        ImageCrop((160, 90), (117, 66), (20, 11), (80, 48), False),
        ImageCrop((160, 90), (117, 66), (20, 11), (80, 48), True),
        ImageCrop((160, 90), (231, 130), (40, 70), (96, 64), True),  # upscaled; rows past the bottom: zeros
    ],
)
def test_the_image_moves_exactly_as_its_matrix_says(crop):
    out = crop.apply(_ramp(*crop.source_size))
    width, height = crop.final_size
    assert out.shape == (height, width, 3)
    v, u = np.mgrid[0:height, 0:width] + 0.5
    pixels = np.c_[u.ravel(), v.ravel(), np.ones(u.size), np.ones(u.size)]  # (u d, v d, d, 1) with d = 1
    source = pixels @ np.linalg.inv(crop.matrix()).T
    source_u, source_v = source[:, 0].reshape(height, width), source[:, 1].reshape(height, width)
    margin = 1.5 * crop.source_size[0] / crop.resized[0]  # the bilinear resize clamps at the borders
    inside = (
        (source_u > margin)
        & (source_u < crop.source_size[0] - margin)
        & (source_v > margin)
        & (source_v < crop.source_size[1] - margin)
    )
    assert inside.mean() > 0.5
    assert np.allclose(out[..., 0][inside], source_u[inside], atol=2e-3)
    assert np.allclose(out[..., 1][inside], source_v[inside], atol=2e-3)
    outside = (source_v > crop.source_size[1] + 1) | (source_u > crop.source_size[0] + 1) | (source_u < -1)
    assert (out[outside] == 0).all()


@pytest.mark.parametrize(
    ("final_size", "resized", "corner"),
    [
        ((800, 320), (800, 450), (0, 130)),
        ((1408, 512), (1408, 792), (0, 280)),
        ((1600, 640), (1600, 900), (0, 260)),
    ],
)
def test_the_test_time_transform_is_petrs_resize_and_bottom_crop(final_size, resized, corner):
    crop = ResizeCropFlip(final_size).draw((1600, 900), np.random.default_rng(0))
    assert (crop.resized, crop.corner, crop.flip) == (resized, corner, False)
    scale = resized[0] / 1600
    assert np.allclose(crop.matrix()[:2, :3], [[scale, 0, -corner[0]], [0, scale, -corner[1]]])


def test_training_draws_resize_crop_and_flip_within_the_published_ranges():
    crops = [TRAIN_CROP.draw((320, 180), np.random.default_rng(seed)) for seed in range(40)]
    factors = np.array([crop.resized[0] / 320 for crop in crops])
    assert factors.min() >= 0.85 - 1 / 320 and factors.max() <= 1.0 and factors.std() > 0.02
    assert 5 < sum(crop.flip for crop in crops) < 35
    for crop in crops:
        assert 0 <= crop.corner[0] <= crop.resized[0] - 256
        bottom = crop.corner[1] + 96  # 0..10 % of the resized height cut off at the bottom
        assert 0.9 * crop.resized[1] - 1 <= bottom <= crop.resized[1]


def _crop_of(matrix: np.ndarray, source_size: tuple[int, int], final_size: tuple[int, int]) -> ImageCrop:
    """The :class:`ImageCrop` whose matrix ``matrix`` is."""
    flip = matrix[0, 0] < 0
    resized = (round(abs(matrix[0, 0]) * source_size[0]), round(matrix[1, 1] * source_size[1]))
    left = matrix[0, 2] - final_size[0] if flip else -matrix[0, 2]
    return ImageCrop(source_size, resized, (round(left), round(-matrix[1, 2])), final_size, bool(flip))


def test_the_dataset_crops_all_twelve_images_and_matrices_alike(infos):
    prev_frame = PrevFrame(train_range_s=(0.29, 2.29))
    plain = NuScenesMultiViewDataset(infos, image_size=None, prev_frame=prev_frame)
    cropped = NuScenesMultiViewDataset(infos, image_size=None, prev_frame=prev_frame, image_crop=TRAIN_CROP)
    flips = set()
    for epoch in range(3):
        for dataset in (plain, cropped):
            dataset.set_epoch(epoch)
        for index in range(len(infos["samples"])):
            raw, item = plain[index], cropped[index]
            assert item["img"].shape[-2:] == (96, 256)
            maps = item["lidar2img"][0].double().numpy() @ np.linalg.inv(raw["lidar2img"][0].double().numpy())
            assert np.allclose(maps, maps[0], atol=1e-4)  # one draw for the 12 views
            crop = _crop_of(maps[0], SWEEPS_SPEC.image_size, (256, 96))
            assert np.allclose(crop.matrix(), maps[0], atol=1e-4)
            flips.add(crop.flip)
            for view in range(12):  # the same content where no zero padding is involved
                expected = crop.apply(raw["img"][0, view].numpy().transpose(1, 2, 0))
                got = item["img"][0, view].numpy().transpose(1, 2, 0)
                assert np.allclose(got[2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-4)
            corners = box_corners(raw["gt_boxes"].double().numpy())  # (K, 8, 3)
            for view in range(12):
                before = _project(raw["lidar2img"][0, view].double().numpy(), corners)
                after = _project(item["lidar2img"][0, view].double().numpy(), corners)
                mapped = _project(crop.matrix(), np.concatenate([before, np.ones_like(before[..., :1])], -1))
                assert np.allclose(after, mapped, atol=1e-2)
    assert flips == {False, True}


def test_rotation_and_scaling_keep_every_projected_corner_and_velocity_end(infos):
    rng = np.random.default_rng(0)
    sample = infos["samples"][2]
    lidar2img = np.stack([np.asarray(c["lidar2img"], np.float64) for c in sample["cameras"].values()])
    boxes = np.asarray(sample["gt"]["boxes"], np.float64)
    boxes[:, 7:9] = rng.normal(size=(len(boxes), 2))
    for angle, scale in [(0.3, 1.04), (-0.39, 0.95)]:
        moved, moved_lidar2img = rotate_scale_scene(boxes, lidar2img, angle, scale)
        assert np.abs(moved[:, :2] - boxes[:, :2]).max() > 1.0
        for view in range(len(lidar2img)):
            before = _project(lidar2img[view], box_corners(boxes))
            after = _project(moved_lidar2img[view], box_corners(moved))
            assert np.allclose(after, before, atol=1e-6 * np.abs(before).max())
            ends = _project(lidar2img[view], boxes[:, :3] + np.c_[boxes[:, 7:9], np.zeros(len(boxes))])
            moved_ends = _project(
                moved_lidar2img[view], moved[:, :3] + np.c_[moved[:, 7:9], np.zeros(len(moved))]
            )
            assert np.allclose(moved_ends, ends, atol=1e-6 * np.abs(ends).max())


def test_the_dataset_rotates_and_scales_boxes_with_every_view(infos):
    plain = NuScenesMultiViewDataset(infos, image_size=None, prev_frame=PrevFrame())
    augmented = NuScenesMultiViewDataset(
        infos, image_size=None, prev_frame=PrevFrame(), scene_aug=GlobalRotScale()
    )
    raw, item = plain[3], augmented[3]
    assert item["lidar2img"].shape == (1, 12, 4, 4) and len(raw["gt_boxes"]) > 0
    assert not np.allclose(item["gt_boxes"].numpy(), raw["gt_boxes"].numpy(), atol=1e-2)
    corners = box_corners(raw["gt_boxes"].double().numpy())
    for view in range(12):
        lidar2img = raw["lidar2img"][0, view].double().numpy()
        in_front = (np.c_[corners.reshape(-1, 3), np.ones(corners.size // 3)] @ lidar2img[2]) > 1.0
        before = _project(lidar2img, corners).reshape(-1, 2)[in_front]
        after = _project(
            item["lidar2img"][0, view].double().numpy(), box_corners(item["gt_boxes"].double().numpy())
        ).reshape(-1, 2)[in_front]
        assert in_front.any() and np.allclose(after, before, atol=2e-2)  # float32 items
    assert (item["img"] == raw["img"]).all()
