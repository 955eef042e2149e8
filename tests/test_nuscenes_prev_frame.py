"""PETRv2's earlier frame on the synthetic set with camera sweeps: infos, choice, matrices, timestamps."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes.utils.geometry_utils import view_points
from nuscenes_fixtures import SWEEPS_SPEC, sweeps_dataset  # noqa: F401

from bev.task import NuScenesDetectionTask
from configs import load_config
from datasets.nuscenes.augment import GlobalRotScale, ResizeCropFlip
from datasets.nuscenes.constants import CAMERA_NAMES
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.dataset import NuScenesMultiViewDataset, collate_nuscenes
from datasets.nuscenes.infos import build_infos, infos_path, load_infos, save_infos
from datasets.nuscenes.prev_frame import PrevFrame
from datasets.nuscenes.synthetic import CAMERA_DELAY_US, VERSION

SPLIT = "mini_train"  # one scene of SWEEPS_SPEC.samples_per_scene samples
FRAME_PERIOD_S = 0.5 / (SWEEPS_SPEC.camera_sweeps + 1)
TEST, TRAIN = PrevFrame(), PrevFrame(train_range_s=(0.29, 2.29))
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bev"


@pytest.fixture(scope="module")
def infos(sweeps_dataset) -> dict:  # noqa: F811
    return load_infos(infos_path(sweeps_dataset.infos_dir, SPLIT))


def _dataset(infos: dict, prev_frame: PrevFrame = TEST, **options) -> NuScenesMultiViewDataset:
    return NuScenesMultiViewDataset(infos, image_size=None, prev_frame=prev_frame, **options)


def _chosen_offset(item: dict) -> float:
    """Seconds between the current and the earlier views (PETRv2's frame interval)."""
    timestamps = item["timestamps"][0].double()
    return float((timestamps[6:] - timestamps[:6]).mean())


def test_infos_keep_every_earlier_camera_frame_back_to_the_scene_start(infos):
    frames_per_interval = SWEEPS_SPEC.camera_sweeps + 1
    first = infos["samples"][0]
    for position, sample in enumerate(infos["samples"]):
        assert len(sample["sweeps"]) == position * frames_per_interval
        for channel in CAMERA_NAMES:
            times = [sample["cameras"][channel]["timestamp"]] + [
                s[channel]["timestamp"] for s in sample["sweeps"]
            ]
            assert np.allclose(np.diff(times) * 1e-6, -FRAME_PERIOD_S, atol=2e-6)  # newest first, 12 Hz
            if sample["sweeps"]:  # the walk ends at the scene's first keyframe
                assert sample["sweeps"][-1][channel]["token"] == first["cameras"][channel]["token"]
                assert sample["sweeps"][0][channel]["path"].startswith(f"sweeps/{channel}/")


def test_max_sweeps_bounds_the_walk_and_zero_is_refused_by_prev_frame(sweeps_dataset):  # noqa: F811
    nusc = open_nuscenes(sweeps_dataset.root, VERSION)
    short = build_infos(nusc, SPLIT, max_sweeps=4)
    assert [len(s["sweeps"]) for s in short["samples"]] == [0, 4, 4, 4]
    with pytest.raises(ValueError, match="no camera sweeps for any sample"):
        _dataset(build_infos(nusc, SPLIT, max_sweeps=0))


def test_infos_with_sweeps_round_trip(infos, tmp_path):
    assert load_infos(save_infos(infos, tmp_path / "infos.json")) == infos


def test_old_infos_are_read_but_refused_where_the_earlier_frame_is_needed(infos, tmp_path):
    old = copy.deepcopy(infos)
    old["format_version"] = 1
    for sample in old["samples"]:
        del sample["sweeps"]
    loaded = load_infos(save_infos(old, tmp_path / "old.json"))
    NuScenesMultiViewDataset(loaded, image_size=None)  # still fine without prev_frame
    with pytest.raises(ValueError, match="format_version 1.*no camera sweeps.*tools/create_data.py nuscenes"):
        _dataset(loaded)
    missing = copy.deepcopy(infos)
    del missing["samples"][1]["sweeps"]
    with pytest.raises(ValueError, match="sample 1 lacks key.*sweeps"):
        load_infos(save_infos(missing, tmp_path / "broken.json"))


def test_a_batch_carries_twelve_views_and_their_timestamps(infos):
    batch = collate_nuscenes([_dataset(infos)[i] for i in (2, 3)])
    height, width = SWEEPS_SPEC.image_size[::-1]
    assert batch["img"].shape == (2, 1, 12, 3, height, width)
    assert batch["lidar2img"].shape == (2, 1, 12, 4, 4) and batch["timestamps"].shape == (2, 1, 12)
    sample = infos["samples"][3]
    current = [
        (sample["lidar"]["timestamp"] - sample["cameras"][c]["timestamp"]) * 1e-6 for c in CAMERA_NAMES
    ]
    assert np.allclose(current, [-CAMERA_DELAY_US[c] * 1e-6 for c in CAMERA_NAMES])
    assert torch.allclose(batch["timestamps"][1, 0, :6], torch.tensor(current, dtype=torch.float32))
    with pytest.raises(ValueError, match="num_history"):
        _dataset(infos, num_history=1)


def test_the_test_time_frame_is_the_sweep_nearest_to_1_25_s_back(infos):
    dataset = _dataset(infos)
    for index, sample in enumerate(infos["samples"][1:], start=1):
        offsets = dataset.sweep_offsets(sample)
        expected = offsets[np.argmin(np.abs(offsets - 1.25))]
        assert _chosen_offset(dataset[index]) == pytest.approx(expected, abs=1e-5)
    assert _chosen_offset(dataset[3]) == pytest.approx(15 * FRAME_PERIOD_S, abs=1e-5)  # the 15th frame back
    assert _chosen_offset(dataset[1]) == pytest.approx(6 * FRAME_PERIOD_S, abs=1e-5)  # only 0.5 s yet: oldest


def test_training_draws_the_earlier_frame_within_the_range(infos):
    dataset = _dataset(infos, TRAIN)
    chosen = {}
    for epoch in range(12):
        dataset.set_epoch(epoch)
        for index in (1, 3):
            chosen.setdefault(index, set()).add(round(_chosen_offset(dataset[index]) / FRAME_PERIOD_S))
    assert chosen[1] <= {4, 5, 6} and len(chosen[1]) >= 2  # 0.33..0.5 s: the frames in range so far
    assert chosen[3] <= set(range(4, 19)) and len(chosen[3]) >= 5
    assert TRAIN.choose(np.array([0.1, 0.2]), np.random.default_rng(0)) == 1  # none in range: the nearest


def test_a_scene_start_reuses_its_own_images_with_the_pad_gap(infos):
    item = _dataset(infos)[0]
    assert torch.equal(item["img"][0, 6:], item["img"][0, :6])
    assert torch.equal(item["lidar2img"][0, 6:], item["lidar2img"][0, :6])
    gap = item["timestamps"][0, 6:] - item["timestamps"][0, :6]
    assert torch.allclose(gap, torch.full((6,), TEST.pad_offset_s), atol=1e-6)


def test_the_earlier_lidar2img_projects_a_static_box_onto_it_in_the_earlier_image(infos, sweeps_dataset):  # noqa: F811
    """Current-frame centres of static boxes through the earlier views' lidar2img land where the devkit puts
    the same annotations in that earlier image (its own ego pose and calibration). Centres, not corners: the
    lidar-frame boxes are yaw-only, so their corners lose the lidar's tilt (boxes.py)."""
    nusc = open_nuscenes(sweeps_dataset.root, VERSION)
    index, sample = 3, infos["samples"][3]
    item = _dataset(infos)[index]
    sweep = sample["sweeps"][round(_chosen_offset(item) / FRAME_PERIOD_S) - 1]
    gt = sample["gt"]
    boxes = np.asarray(gt["boxes"], dtype=np.float64)
    static = np.asarray(gt["velocity_valid"]) & (np.linalg.norm(boxes[:, 7:9], axis=1) < 1e-6)
    centres = np.c_[boxes[static, :3], np.ones(static.sum())]  # current lidar frame
    instances = np.asarray(gt["instance_tokens"])[static]
    checked = 0
    for view, channel in enumerate(CAMERA_NAMES):
        _, devkit_boxes, intrinsic = nusc.get_sample_data(sweep[channel]["token"])
        by_instance = {
            nusc.get("sample_annotation", box.token)["instance_token"]: box for box in devkit_boxes
        }
        lidar2img = item["lidar2img"][0, 6 + view].double().numpy()
        keyframe = item["lidar2img"][0, view].double().numpy()
        for centre, instance in zip(centres, instances, strict=True):
            box = by_instance.get(instance)
            if box is None or box.center[2] < 1.0:
                continue
            expected = view_points(box.center[:, None], intrinsic, normalize=True)[:2, 0]
            point = lidar2img @ centre
            assert np.allclose(point[:2] / point[2], expected, atol=0.01)
            stale = keyframe @ centre  # the current image's matrix (no ego motion): elsewhere
            assert np.abs(stale[:2] / stale[2] - expected).max() > 2.0
            checked += 1
    assert checked >= 3


def test_the_config_options_build_petrs_train_and_val_datasets(sweeps_dataset):  # noqa: F811
    """``data.prev_frame`` / ``resize_crop_flip`` / ``global_rot_scale``: random in training, the test-time
    choice and crop on val; off (today's datasets) without them."""
    overrides = [
        f"data.root={sweeps_dataset.root}",
        f"data.infos_dir={sweeps_dataset.infos_dir}",
        "data.train_split=mini_train",
        "data.val_split=mini_val",
        "data.num_history=0",
    ]
    petr = [
        "data.prev_frame={'test_offset_s': 1.25, 'train_range_s': [0.29, 2.29], 'pad_offset_s': 1.245}",
        "data.resize_crop_flip={'final_size': [256, 96], 'resize_range': [0.85, 1.0], "
        "'bot_pct_range': [0.0, 0.0], 'flip': True}",
        "data.global_rot_scale={'rot_range': [-0.3925, 0.3925], 'scale_range': [0.95, 1.05]}",
    ]
    plain = NuScenesDetectionTask(load_config(CONFIGS / "bevformer_tiny.py", overrides)).data
    assert all(
        (d.prev_frame, d.image_crop, d.scene_aug) == (None, None, None)
        for d in (plain.build_dataset("train"), plain.build_dataset("val"))
    )
    data = NuScenesDetectionTask(load_config(CONFIGS / "bevformer_tiny.py", overrides + petr)).data
    train, val = data.build_dataset("train"), data.build_dataset("val")
    assert train.prev_frame == TRAIN and val.prev_frame == TEST
    assert train.image_crop == ResizeCropFlip((256, 96), (0.85, 1.0), (0.0, 0.0), True)
    assert val.image_crop == ResizeCropFlip((256, 96)) and train.image_size is None is val.image_size
    assert train.scene_aug == GlobalRotScale() and val.scene_aug is None
    batch = collate_nuscenes([val[3]])
    assert batch["img"].shape == (1, 1, 12, 3, 96, 256) and batch["timestamps"].shape == (1, 1, 12)
