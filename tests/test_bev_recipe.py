"""BEVFormer's training recipe, data side: the random history queue (exact on resume, never across
scenes), the CAN bus layout (and ``union2one`` of a queue through the model's function), GridMask, the
multi-view photometric distortion and the image scaling with its lidar2img."""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from bev_helpers import (  # noqa: F401 (fixtures: one_thread autouse, tiny_root)
    kill_training_in_epoch,
    one_thread,
    tiny_demo_overrides,
    tiny_root,
)
from nuscenes.eval.common.utils import quaternion_yaw
from nuscenes_fixtures import dataset, val_infos  # noqa: F401
from pyquaternion import Quaternion

from bev.augment import GridMask
from bev.task import NuScenesDetectionTask
from bev.temporal_alignment import published_can_bus
from configs import load_config
from datasets.nuscenes.augment import (
    PhotoMetricDistortion,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    hsv_to_rgb,
    resize_camera,
    rgb_to_hsv,
    shift_hue,
)
from datasets.nuscenes.dataset import NuScenesMultiViewDataset
from detr2d.runtime.fit import fit

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bev"
SMALL = (32, 18)  # (W, H): the dataset tests only look at which frames and vectors come back
HISTORY = 2  # queue_length 3, as BEVFormer-tiny/-small


def _queue_dataset(infos: dict, **options) -> NuScenesMultiViewDataset:
    return NuScenesMultiViewDataset(
        infos, image_size=SMALL, num_history=HISTORY, random_history=True, **options
    )


def _frame_positions(item: dict, infos: dict) -> list[int]:
    """Index into ``infos["samples"]`` of each frame of ``item``, found by its absolute CAN bus vector."""
    table = np.array([sample["can_bus"] for sample in infos["samples"]])
    return [int(np.argmin(np.abs(table - row.double().numpy()).sum(1))) for row in item["can_bus"]]


# ---- the queue ---------------------------------------------------------------------------------------


def test_random_history_drops_one_of_the_previous_queue_length_frames_uniformly(val_infos):  # noqa: F811
    queue = _queue_dataset(val_infos)
    counts: dict[tuple[int, ...], int] = {}
    for epoch in range(300):
        offsets = tuple(queue.history_offsets(np.random.default_rng((0, epoch, 4))))
        counts[offsets] = counts.get(offsets, 0) + 1
    assert set(counts) == {(3, 2), (3, 1), (2, 1)}  # oldest first, HISTORY of the previous 3
    assert all(70 <= n <= 130 for n in counts.values()), counts  # each 1/3 of 300
    latest = NuScenesMultiViewDataset(val_infos, image_size=SMALL, num_history=HISTORY)
    assert latest.history_offsets(np.random.default_rng(0)) == [2, 1]


def test_queue_frames_follow_the_seeded_draw_and_resume_exactly(val_infos):  # noqa: F811
    queue = _queue_dataset(val_infos, seed=7)
    index = 5  # the last sample of the first scene: every history frame is real
    seen = set()
    for epoch in range(6):
        queue.set_epoch(epoch)
        item = queue[index]
        dropped = 1 + int(np.random.default_rng((7, epoch, index)).integers(HISTORY + 1))
        expected = [index - o for o in (3, 2, 1) if o != dropped] + [index]
        assert _frame_positions(item, val_infos) == expected
        assert item["history_valid"].all()
        seen.add(tuple(expected))
    assert len(seen) >= 2  # the epoch changes the draw
    resumed = _queue_dataset(val_infos, seed=7)  # a new process after a restart
    resumed.set_epoch(4)
    queue.set_epoch(4)
    first, again = queue[index], resumed[index]
    for key in ("img", "lidar2img", "can_bus", "history_valid", "ego_motion"):
        assert torch.equal(first[key], again[key]), key


def test_the_queue_never_reaches_into_the_previous_scene(val_infos):  # noqa: F811
    queue = _queue_dataset(val_infos)
    scene_of = [sample["scene_token"] for sample in val_infos["samples"]]
    start = scene_of.index(scene_of[-1])  # first sample of the second scene
    patterns = set()
    for epoch in range(12):
        queue.set_epoch(epoch)
        for index in (start, start + 1):
            item = queue[index]
            valid = item["history_valid"].tolist()
            positions = _frame_positions(item, val_infos)
            assert all(scene_of[p] == scene_of[index] for p in positions)  # padding repeats the scene start
            assert valid == sorted(valid) and valid[-1]  # padding only before the real frames
            for t in range(1, HISTORY + 1):  # no motion from a missing predecessor
                if not valid[t - 1]:
                    assert torch.equal(item["ego_motion"][t], torch.eye(4))
            patterns.add(tuple(valid))
    assert (False, False, True) in patterns and (False, True, True) in patterns


# ---- the CAN bus -------------------------------------------------------------------------------------


def test_dataset_can_bus_has_bevformers_layout(val_infos):  # noqa: F811
    item = NuScenesMultiViewDataset(val_infos, image_size=SMALL, num_history=HISTORY)[3]
    absolute = np.array([val_infos["samples"][i]["can_bus"] for i in (1, 2, 3)])
    np.testing.assert_allclose(item["can_bus"].double().numpy(), absolute, rtol=1e-6)
    for t, index in enumerate((1, 2, 3)):
        ego2global = np.asarray(val_infos["samples"][index]["lidar"]["ego2global"])
        np.testing.assert_allclose(absolute[t, :3], ego2global[:3, 3])  # ego position, global frame
        yaw = quaternion_yaw(Quaternion(absolute[t, 3:7]))  # ego rotation wxyz
        assert np.isclose(np.deg2rad(absolute[t, 17]) % (2 * np.pi), yaw % (2 * np.pi))
        assert np.isclose(absolute[t, 16], np.deg2rad(absolute[t, 17])) and 0 <= absolute[t, 17] < 360


def test_union2one_of_a_random_queue_takes_differences_between_the_picked_frames(val_infos):  # noqa: F811
    """The model's ``published_can_bus`` with ``history_valid`` as ``prev_bev_exists`` on dataset items:
    differences with the previous *picked* frame, zeros after padding, as BEVFormer's ``union2one``."""
    queue = _queue_dataset(val_infos)
    checked = set()
    for epoch in range(8):
        queue.set_epoch(epoch)
        for index in (1, 5):
            item = queue[index]
            positions, valid = _frame_positions(item, val_infos), item["history_valid"]
            absolute = np.array([val_infos["samples"][p]["can_bus"] for p in positions])
            can_bus = item["can_bus"]
            for t in range(1, HISTORY + 1):
                ours = published_can_bus(can_bus[t : t + 1], can_bus[t - 1 : t], valid[t - 1 : t])[0]
                if valid[t - 1]:
                    expected = absolute[t, [0, 1, 2, 17]] - absolute[t - 1, [0, 1, 2, 17]]
                    checked.add(positions[t] - positions[t - 1])
                else:
                    expected = np.zeros(4)
                np.testing.assert_allclose(ours[[0, 1, 2, 17]].double().numpy(), expected, atol=2e-3)
                np.testing.assert_allclose(ours[3:17].numpy(), can_bus[t, 3:17].numpy())
    assert checked == {1, 2}  # consecutive picks and picks with a skipped frame between them


# ---- GridMask ----------------------------------------------------------------------------------------


def _reference_mask(
    height: int, width: int, ratio: float, mode: int, use_h: bool, use_w: bool
) -> torch.Tensor:
    """BEVFormer's GridMask loops, drawing d, st_h, st_w, r in the documented order from torch's RNG."""
    hh, ww = int(1.5 * height), int(1.5 * width)
    d = int(torch.randint(2, height, ()))
    stripe = min(max(int(d * ratio + 0.5), 1), d - 1)
    st_h, st_w = (int(v) for v in torch.randint(d, (2,)))
    assert int(torch.randint(1, ())) == 0  # rotate=1: no rotation
    mask = np.ones((hh, ww), np.float32)
    if use_h:
        for i in range(hh // d):
            s = d * i + st_h
            mask[s : min(s + stripe, hh), :] = 0
    if use_w:
        for i in range(ww // d):
            s = d * i + st_w
            mask[:, s : min(s + stripe, ww)] = 0
    top, left = (hh - height) // 2, (ww - width) // 2
    mask = torch.from_numpy(mask[top : top + height, left : left + width])
    return 1 - mask if mode == 1 else mask


@pytest.mark.parametrize(
    ("height", "width", "ratio", "mode", "use_h", "use_w"),
    [(18, 32, 0.5, 1, True, True), (45, 80, 0.5, 1, True, True), (30, 20, 0.3, 0, True, False)],
)
def test_grid_mask_pattern_is_the_published_one(height, width, ratio, mode, use_h, use_w):
    grid = GridMask(use_h, use_w, rotate=1, offset=False, ratio=ratio, mode=mode, prob=1.0)
    for seed in range(20):
        torch.manual_seed(seed)
        ours = grid.mask(height, width)
        torch.manual_seed(seed)
        assert torch.equal(ours, _reference_mask(height, width, ratio, mode, use_h, use_w)), seed


def test_grid_mask_statistics_and_one_mask_per_sample():
    torch.manual_seed(0)
    grid = GridMask(True, True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)
    img = torch.ones(300, 2, 3, 45, 80)
    out = grid(img)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    per_sample = out.flatten(1)
    masked = per_sample.min(1).values == 0
    assert 0.62 <= masked.float().mean().item() <= 0.78  # prob 0.7
    assert torch.equal(out, out[:, :1, :1].expand_as(out))  # every camera and channel of a sample alike
    kept = per_sample[masked].mean(1)
    # mode 1 keeps the stripes: 1 - (1 - l/d)^2 with l/d about 0.5 -> about 3/4 kept
    assert 0.70 <= kept.mean().item() <= 0.85 and kept.min().item() >= 0.5


def test_grid_mask_is_the_identity_in_eval_and_with_prob_0():
    img = torch.randn(2, 6, 3, 18, 32)
    grid = GridMask(prob=1.0)
    assert not torch.equal(grid(img), img)
    grid.eval()
    assert grid(img) is img
    assert GridMask(prob=0.0)(img) is img
    with pytest.raises(ValueError, match="mode must be 0"):
        GridMask(mode=2)
    with pytest.raises(ValueError, match=r"img \(B, Ncam, C, H, W\)"):
        GridMask()(img[0])


def test_task_masks_only_the_current_training_frame():
    config = load_config(CONFIGS / "demo.py", ["data.grid_mask={'prob': 1.0}"])
    task = NuScenesDetectionTask(config)
    batch = {
        "img": torch.ones(2, 3, 6, 3, 36, 64),
        "lidar2img": torch.eye(4).expand(2, 3, 6, 4, 4),
        "can_bus": torch.arange(2 * 3 * 18.0).reshape(2, 3, 18),
        "ego_motion": torch.eye(4).expand(2, 3, 4, 4),
        "history_valid": torch.ones(2, 3, dtype=torch.bool),
        "gt_boxes": [torch.zeros(0, 9)] * 2,
        "gt_labels": [torch.zeros(0, dtype=torch.int64)] * 2,
    }
    torch.manual_seed(0)
    (inputs,), targets = task.split_batch(batch, torch.device("cpu"))
    assert torch.equal(inputs["img"][:, :-1], batch["img"][:, :-1])  # history frames: never masked
    current = inputs["img"][:, -1]
    assert (current == 0).any(dim=(1, 2, 3, 4)).all()  # prob 1: every sample's current frame
    assert torch.equal(batch["img"], torch.ones(2, 3, 6, 3, 36, 64))  # the loader's batch is untouched
    assert torch.equal(inputs["can_bus"], batch["can_bus"]) and len(targets["gt_boxes"]) == 2
    (plain,), _ = NuScenesDetectionTask(load_config(CONFIGS / "demo.py")).split_batch(
        batch, torch.device("cpu")
    )
    assert torch.equal(plain["img"], batch["img"])  # the demo trains without GridMask


# ---- photometric distortion ----------------------------------------------------------------------------


class ScriptedRng:
    """Stands in for ``np.random.Generator``: returns the scripted draws in order and checks them."""

    def __init__(self, coins: list[int], uniforms: list[tuple[float, float, float]], permutation=None):
        self.coins, self.uniforms, self.perm = list(coins), list(uniforms), permutation

    def integers(self, high: int) -> int:
        assert high == 2
        return self.coins.pop(0)

    def uniform(self, low: float, high: float) -> float:
        expected_low, expected_high, value = self.uniforms.pop(0)
        assert (low, high) == (expected_low, expected_high)
        return value

    def permutation(self, n: int) -> np.ndarray:
        assert n == 3 and self.perm is not None
        return np.array(self.perm)


def _tiny_image() -> np.ndarray:
    return np.array(
        [[[200, 40, 90], [60, 180, 120], [90, 90, 90]], [[250, 200, 10], [30, 60, 240], [120, 60, 60]]],
        dtype=np.float32,
    )


def _hand_hsv(image: np.ndarray, saturation: float = 1.0, hue: float = 0.0) -> np.ndarray:
    """colorsys round trip per pixel, hue in degrees wrapped like mmdet."""
    out = np.empty_like(image)
    for index in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*image[index].astype(np.float64))
        h = h * 360 + hue
        h = h - 360 if h > 360 else h + 360 if h < 0 else h
        out[index] = colorsys.hsv_to_rgb(h / 360 % 1.0, s * saturation, v)
    return out


def test_each_photometric_op_matches_a_hand_computation():
    image = _tiny_image()
    np.testing.assert_array_equal(adjust_brightness(image, -12.5), image - 12.5)
    np.testing.assert_array_equal(adjust_contrast(image, 1.25), image * 1.25)
    hsv = rgb_to_hsv(image)
    assert hsv[0, 0, 0] == pytest.approx(colorsys.rgb_to_hsv(200, 40, 90)[0] * 360, abs=1e-3)
    assert hsv[0, 0, 2] == 200  # value is the max channel, not rescaled
    np.testing.assert_allclose(
        hsv_to_rgb(adjust_saturation(hsv, 0.6)), _hand_hsv(image, saturation=0.6), atol=1e-2
    )
    np.testing.assert_allclose(hsv_to_rgb(shift_hue(hsv, 17.0)), _hand_hsv(image, hue=17.0), atol=1e-2)
    wrapped = shift_hue(np.array([[[350.0, 0.5, 9.0], [5.0, 0.5, 9.0]]], np.float32), 18.0)
    assert wrapped[0, :, 0].tolist() == pytest.approx([8.0, 23.0])
    assert shift_hue(np.array([[[5.0, 0.5, 9.0]]], np.float32), -18.0)[0, 0, 0] == pytest.approx(347.0)


def test_photometric_distortion_draws_and_applies_in_mmdets_order():
    image = _tiny_image()
    distortion = PhotoMetricDistortion()
    # mode 1: brightness, contrast, saturation, hue, swap
    rng = ScriptedRng(
        [1, 1, 1, 1, 1, 1],
        [(-32, 32, 10.0), (0.5, 1.5, 1.2), (0.5, 1.5, 0.7), (-18, 18, -9.0)],
        permutation=[2, 0, 1],
    )
    expected = _hand_hsv((image + 10.0) * 1.2, saturation=0.7, hue=-9.0)[..., [2, 0, 1]]
    np.testing.assert_allclose(distortion(image.copy(), rng), expected, atol=2e-2)
    assert not rng.coins and not rng.uniforms
    # mode 0: no brightness, no saturation, hue, then contrast last, no swap
    rng = ScriptedRng([0, 0, 0, 1, 1, 0], [(-18, 18, 12.0), (0.5, 1.5, 0.8)])
    expected = _hand_hsv(image, hue=12.0) * 0.8
    np.testing.assert_allclose(distortion(image.copy(), rng), expected, atol=2e-2)
    assert not rng.coins and not rng.uniforms
    with pytest.raises(ValueError, match="float32 image"):
        distortion(image.astype(np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="contrast_range"):
        PhotoMetricDistortion(contrast_range=(1.5, 0.5))


def test_dataset_distorts_every_camera_reproducibly(val_infos):  # noqa: F811
    plain = NuScenesMultiViewDataset(val_infos, image_size=SMALL)[2]["img"]
    distorted = NuScenesMultiViewDataset(val_infos, image_size=SMALL, photometric=PhotoMetricDistortion())
    first = distorted[2]["img"]
    assert torch.equal(first, distorted[2]["img"])
    changed = (first - plain)[0].flatten(1).abs().amax(1)  # per camera
    assert (changed > 0.05).sum() >= 5  # 6 cameras, each left alone with probability 1/64 only
    distorted.set_epoch(1)
    assert not torch.equal(first, distorted[2]["img"])


def test_caffe_normalization_gives_bgr_minus_the_mean(dataset, val_infos):  # noqa: F811
    camera = val_infos["samples"][1]["cameras"][val_infos["camera_names"][1]]
    bgr = cv2.resize(cv2.imread(str(dataset.root / camera["path"])), SMALL, interpolation=cv2.INTER_LINEAR)
    mean = np.array([103.530, 116.280, 123.675])
    item = NuScenesMultiViewDataset(
        val_infos, image_size=SMALL, mean=mean / 255, std=[1 / 255] * 3, bgr=True
    )[1]
    ours = item["img"][0, 1].numpy().transpose(1, 2, 0)
    assert np.abs(ours - (bgr - mean)).max() <= 1.0


# ---- image scaling -------------------------------------------------------------------------------------


def test_scaling_keeps_projected_points_on_their_content():
    height, width = 90, 160
    lidar2img = np.eye(4)
    lidar2img[:3, :3] = [[100.0, 80.0, 0.0], [0.0, 45.0, 100.0], [0.0, 1.0, 0.0]]  # K @ (lidar y forward)
    points = np.array([[3.0, 10.0, 1.0, 1.0], [-4.0, 20.0, -1.5, 1.0]])
    image = np.zeros((height, width, 3), np.float32)
    for point in points:
        u, v, depth = (lidar2img @ point)[:3]
        col, row = int(u / depth), int(v / depth)
        image[row - 3 : row + 4, col - 3 : col + 4] = 255.0  # a 7 x 7 patch centred on the point's pixel
    for scale in (0.5, 0.8):
        size = (int(width * scale), int(height * scale))
        resized, scaled = resize_camera(image, lidar2img, size)
        assert resized.shape == (size[1], size[0], 3) and resized.dtype == np.float32
        np.testing.assert_allclose(scaled, np.diag([scale, scale, 1.0, 1.0]) @ lidar2img)
        for point in points:
            u, v, depth = (scaled @ point)[:3]
            assert resized[int(v / depth), int(u / depth), 0] > 200  # the projection is on the patch
    with pytest.raises(ValueError, match="image size"):
        resize_camera(image, lidar2img, (0, 10))


def test_published_configs_turn_the_recipe_on_and_the_demo_off():
    # RandomScaleImageMultiViewImage 0.5 / 0.8 / none of the 1600 x 900 cameras; queue 3 / 3 / 4
    published = {
        "bevformer_tiny": ([800, 450], 2),
        "bevformer_small": ([1280, 720], 2),
        "bevformer_base": ([1600, 900], 3),
    }
    for name, (image_size, num_history) in published.items():
        data = load_config(CONFIGS / f"{name}.py")["data"]
        assert (data["image_size"], data["num_history"], data["random_history"]) == (
            image_size,
            num_history,
            True,
        )
        assert data["photometric_distortion"] == {
            "brightness_delta": 32,
            "contrast_range": [0.5, 1.5],
            "saturation_range": [0.5, 1.5],
            "hue_delta": 18,
        }
        assert data["grid_mask"] == {
            "use_h": True,
            "use_w": True,
            "rotate": 1,
            "offset": False,
            "ratio": 0.5,
            "mode": 1,
            "prob": 0.7,
        }
    demo = load_config(CONFIGS / "demo.py")["data"]
    assert (demo["random_history"], demo["photometric_distortion"], demo["grid_mask"]) == (False, None, None)
    imagenet = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}
    caffe = {"mean": [103.530, 116.280, 123.675], "std": [1.0, 1.0, 1.0], "to_rgb": False}  # BGR
    for name, norm in (("bevformer_tiny", imagenet), ("demo", imagenet)) + tuple(
        (name, caffe) for name in ("bevformer_small", "bevformer_base", "detr3d")
    ):
        assert load_config(CONFIGS / f"{name}.py")["data"]["img_norm"] == norm, name


def test_train_dataset_of_a_published_recipe_is_augmented_and_val_is_not(dataset):  # noqa: F811
    overrides = [
        f"data.root={dataset.root}",
        f"data.infos_dir={dataset.infos_dir}",
        "data.train_split=mini_val",
        "data.val_split=mini_val",
        "data.image_size=[32,18]",
    ]
    task = NuScenesDetectionTask(load_config(CONFIGS / "bevformer_tiny.py", overrides))
    train, val = task.data.build_dataset("train"), task.data.build_dataset("val")
    assert train.random_history and train.photometric == PhotoMetricDistortion() and train.num_history == 2
    assert not val.random_history and val.photometric is None and val.num_history == 0
    assert task.grid_mask is not None and task.grid_mask.prob == 0.7 and task.grid_mask.mode == 1


# ---- the whole recipe in training ------------------------------------------------------------------------


def test_training_with_the_recipe_resumes_exactly(tiny_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    """Random queue, photometric distortion and GridMask on: a run killed in epoch 1 and resumed ends
    exactly where an uninterrupted one does (the dataset's draws are seeded per (seed, epoch, index),
    GridMask draws from torch's checkpointed RNG)."""
    overrides = [
        *tiny_demo_overrides(tiny_root),
        "data.num_history=2",
        "data.random_history=True",
        "data.photometric_distortion={}",
        "data.grid_mask={'prob': 1.0}",
        "schedule.epochs=2",
        "schedule.warmup_iters=3",
        "train.deterministic=True",
    ]
    config = load_config(CONFIGS / "demo.py", overrides)
    fit(NuScenesDetectionTask(config), tmp_path / "full")
    kill_training_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        fit(NuScenesDetectionTask(config), tmp_path / "part")
    monkeypatch.undo()
    fit(NuScenesDetectionTask(config), tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pth")
    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    resumed = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert full["epoch"] == resumed["epoch"] == 1
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
