"""The multi-camera dataset: documented shapes, history frames, ego motion, resize and box filtering."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from nuscenes_fixtures import dataset, val_infos  # noqa: F401
from torch.utils.data import DataLoader

from datasets.nuscenes.constants import CLASS_NAMES, PC_RANGE
from datasets.nuscenes.dataset import IMAGENET_MEAN, IMAGENET_STD, NuScenesMultiViewDataset, collate_nuscenes
from datasets.nuscenes.visualize import denormalize_images

IMAGE_SIZE = (320, 180)
HISTORY = 2


@pytest.fixture(scope="module")
def temporal_dataset(val_infos) -> NuScenesMultiViewDataset:  # noqa: F811
    return NuScenesMultiViewDataset(val_infos, image_size=IMAGE_SIZE, num_history=HISTORY)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batches_have_the_documented_shapes(temporal_dataset, batch_size):
    batch = next(iter(DataLoader(temporal_dataset, batch_size=batch_size, collate_fn=collate_nuscenes)))
    frames, width, height = HISTORY + 1, *IMAGE_SIZE
    assert (
        batch["img"].shape == (batch_size, frames, 6, 3, height, width)
        and batch["img"].dtype == torch.float32
    )
    assert batch["lidar2img"].shape == (batch_size, frames, 6, 4, 4)
    assert batch["can_bus"].shape == (batch_size, frames, 18)
    assert batch["ego_motion"].shape == (batch_size, frames, 4, 4)
    assert batch["history_valid"].shape == (batch_size, frames) and batch["history_valid"].dtype == torch.bool
    assert batch["lidar2global"].shape == (batch_size, 4, 4)
    assert batch["img_shape"].tolist() == [[height, width]] * batch_size
    assert len(batch["gt_boxes"]) == len(batch["gt_labels"]) == len(batch["sample_token"]) == batch_size
    for boxes, labels in zip(batch["gt_boxes"], batch["gt_labels"], strict=True):
        assert boxes.ndim == 2 and boxes.shape[1] == 9 and labels.shape == (len(boxes),)
        assert labels.dtype == torch.int64 and (labels >= 0).all() and (labels < len(CLASS_NAMES)).all()


def test_history_pads_at_the_scene_start(temporal_dataset, val_infos):  # noqa: F811
    first = temporal_dataset[0]
    assert first["history_valid"].tolist() == [False, False, True]
    assert torch.equal(first["img"][0], first["img"][2])
    assert torch.allclose(first["ego_motion"], torch.eye(4).expand(3, 4, 4))
    third = temporal_dataset[2]
    assert third["history_valid"].all()
    assert torch.allclose(third["lidar2img"][1], temporal_dataset[1]["lidar2img"][2])
    assert val_infos["samples"][2]["scene_token"] == val_infos["samples"][0]["scene_token"]


def test_ego_motion_carries_static_objects_into_the_current_frame(temporal_dataset, val_infos):  # noqa: F811
    item = temporal_dataset[3]
    previous, current = val_infos["samples"][2]["gt"], val_infos["samples"][3]["gt"]
    previous_centers = dict(
        zip(previous["instance_tokens"], np.asarray(previous["boxes"])[:, :3], strict=True)
    )
    motion = item["ego_motion"][-1].double().numpy()
    checked = 0
    for token, box, attribute in zip(
        current["instance_tokens"], np.asarray(current["boxes"]), current["attributes"], strict=True
    ):
        if attribute in ("vehicle.parked", "", "pedestrian.standing", "cycle.without_rider"):
            moved = motion @ np.append(previous_centers[token], 1.0)
            assert np.allclose(moved[:3], box[:3], atol=1e-3)
            checked += 1
    assert checked >= 3 and not np.allclose(motion, np.eye(4), atol=1e-2)


def test_resize_scales_lidar2img_and_images_keep_their_content(dataset, val_infos):  # noqa: F811
    item = NuScenesMultiViewDataset(val_infos, image_size=IMAGE_SIZE)[1]
    camera = val_infos["samples"][1]["cameras"]["CAM_FRONT"]
    scale = np.diag([IMAGE_SIZE[0] / camera["width"], IMAGE_SIZE[1] / camera["height"], 1.0, 1.0])
    assert np.allclose(
        item["lidar2img"][0, 0].double().numpy(), scale @ np.asarray(camera["lidar2img"]), rtol=1e-6
    )
    original = cv2.resize(
        cv2.imread(str(dataset.root / camera["path"])), IMAGE_SIZE, interpolation=cv2.INTER_LINEAR
    )
    restored = denormalize_images(item["img"][0].numpy(), IMAGENET_MEAN, IMAGENET_STD)[0]
    assert np.abs(restored.astype(int) - original.astype(int)).max() <= 1


def test_boxes_are_filtered_to_range_classes_and_valid_flags(val_infos):  # noqa: F811
    dataset_ = NuScenesMultiViewDataset(val_infos, image_size=IMAGE_SIZE)
    sample = val_infos["samples"][4]
    gt = sample["gt"]
    boxes = np.asarray(gt["boxes"])
    low, high = np.asarray(PC_RANGE[:3]), np.asarray(PC_RANGE[3:])
    expected = [
        i
        for i, name in enumerate(gt["names"])
        if name in CLASS_NAMES
        and gt["valid_flag"][i]
        and np.all((boxes[i, :3] >= low) & (boxes[i, :3] < high))
    ]
    assert len(expected) < len(gt["names"])  # something is filtered
    _, labels = dataset_._ground_truth(sample)
    assert labels.tolist() == [CLASS_NAMES.index(gt["names"][i]) for i in expected]
    narrow = NuScenesMultiViewDataset(
        val_infos, image_size=IMAGE_SIZE, pc_range=(-5, -5, -5, 5, 5, 3)
    )
    assert all(np.abs(b[:2]).max() < 5 for b in narrow._ground_truth(sample)[0])


def test_missing_image_and_empty_infos_are_named(val_infos, tmp_path):  # noqa: F811
    broken = copy.deepcopy(val_infos)
    broken["samples"][0]["cameras"]["CAM_BACK"]["path"] = "samples/CAM_BACK/gone.jpg"
    with pytest.raises(
        FileNotFoundError, match=r"1 camera image file\(s\) .* not found .*gone\.jpg \(CAM_BACK of sample"
    ):
        NuScenesMultiViewDataset(broken)
    with pytest.raises(ValueError, match="hold no samples"):
        NuScenesMultiViewDataset({**val_infos, "samples": []})
