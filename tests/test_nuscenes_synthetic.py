"""The synthetic generator writes data the official devkit reads as nuScenes v1.0-mini."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.can_bus.can_bus_api import NuScenesCanBus
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import mini_train, mini_val, train, val
from nuscenes_fixtures import dataset, nusc  # noqa: F401

from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES, LIDAR_NAME
from datasets.nuscenes.database import REQUIRED_TABLES
from datasets.nuscenes.splits import scene_names_of_split
from datasets.nuscenes.synthetic import SCENE_NAMES, SyntheticSpec, generate_synthetic_nuscenes


def test_devkit_loads_all_tables_and_scene_names_follow_the_mini_splits(dataset, nusc):  # noqa: F811
    spec = SyntheticSpec()
    table_dir = dataset.root / "v1.0-mini"
    assert all((table_dir / f"{name}.json").is_file() for name in REQUIRED_TABLES)
    assert len(nusc.scene) == spec.num_scenes
    assert len(nusc.sample) == spec.num_scenes * spec.samples_per_scene
    names = [scene["name"] for scene in nusc.scene]
    assert sum(name in mini_val for name in names) == 2 and sum(name in mini_train for name in names) == 2
    splits = json.loads((table_dir / "splits.json").read_text())
    assert set(splits["synthetic_val"]) == set(mini_val)
    print(f"generation of the default dataset took {dataset.generation_seconds:.1f} s")


def test_sensor_files_match_their_records(dataset, nusc):  # noqa: F811
    sample = nusc.sample[3]
    for channel in CAMERA_NAMES:
        record = nusc.get("sample_data", sample["data"][channel])
        image = cv2.imread(str(dataset.root / record["filename"]))
        assert image.shape == (record["height"], record["width"], 3) == (450, 800, 3)
        assert 20 < image.std() < 120  # a picture, not a blank
    lidar = nusc.get("sample_data", sample["data"][LIDAR_NAME])
    points = np.fromfile(dataset.root / lidar["filename"], dtype=np.float32)
    assert points.size % 5 == 0 and 2000 < points.size // 5 < 40000
    assert lidar["fileformat"] == "pcd" and lidar["is_key_frame"]


def test_num_lidar_pts_are_the_points_inside_each_box(dataset, nusc):  # noqa: F811
    for sample in nusc.sample[::9]:
        lidar_token = sample["data"][LIDAR_NAME]
        path, boxes, _ = nusc.get_sample_data(lidar_token)
        points = LidarPointCloud.from_file(path).points[:3].astype(np.float64)
        for box in boxes:
            stored = nusc.get("sample_annotation", box.token)["num_lidar_pts"]
            assert int(points_in_box(box, points).sum()) == stored


def test_instances_chain_and_every_class_is_observed_in_val(nusc):  # noqa: F811
    for instance in nusc.instance:
        chain, token = [], instance["first_annotation_token"]
        while token:
            chain.append(token)
            token = nusc.get("sample_annotation", token)["next"]
        assert (
            chain[-1] == instance["last_annotation_token"] and len(chain) == instance["nbr_annotations"] >= 2
        )
        assert np.all(np.isfinite(nusc.box_velocity(chain[0])))
    val_scenes = {scene["token"] for scene in nusc.scene if scene["name"] in mini_val}
    observed = Counter(
        category_to_detection_name(ann["category_name"])
        for ann in nusc.sample_annotation
        if ann["num_lidar_pts"] > 0 and nusc.get("sample", ann["sample_token"])["scene_token"] in val_scenes
    )
    assert set(CLASS_NAMES) <= set(observed)
    assert all(len(ann["attribute_tokens"]) <= 1 for ann in nusc.sample_annotation)


def test_camera_ego_poses_follow_their_own_timestamps(nusc):  # noqa: F811
    sample = nusc.sample[5]
    lidar = nusc.get("sample_data", sample["data"][LIDAR_NAME])
    assert lidar["timestamp"] == sample["timestamp"]
    for channel in CAMERA_NAMES:
        camera = nusc.get("sample_data", sample["data"][channel])
        assert 0 < camera["timestamp"] - sample["timestamp"] <= 50_000
        distance = np.linalg.norm(
            np.subtract(
                nusc.get("ego_pose", camera["ego_pose_token"])["translation"],
                nusc.get("ego_pose", lidar["ego_pose_token"])["translation"],
            )
        )
        assert distance > 0  # the ego moved between the lidar and the camera


def test_can_bus_files_load_with_the_devkit(dataset, nusc):  # noqa: F811
    can_bus = NuScenesCanBus(dataroot=str(dataset.root))
    scene = nusc.scene[0]
    poses = can_bus.get_messages(scene["name"], "pose")
    assert poses[0]["utime"] < nusc.get("sample", scene["first_sample_token"])["timestamp"]
    assert len(can_bus.get_messages(scene["name"], "route")) > 2


def test_more_than_ten_scenes_take_trainval_names_four_train_per_val(tmp_path: Path):
    root = generate_synthetic_nuscenes(
        tmp_path, SyntheticSpec(num_scenes=15, samples_per_scene=2, image_size=(32, 18), lidar_azimuths=16)
    )
    database = NuScenes("v1.0-mini", str(root), verbose=False)
    names = [scene["name"] for scene in database.scene]
    assert len(set(names)) == 15 and set(mini_train) | set(mini_val) <= set(names)
    extra = [name for name in names if name not in mini_train and name not in mini_val]
    assert [name in val for name in extra] == [False] * 4 + [True]
    assert [name in train for name in extra] == [True] * 4 + [False]
    assert len(scene_names_of_split(database, "synthetic_train")) == 12
    val_names = [name for name in names if name in mini_val or name == extra[-1]]
    assert scene_names_of_split(database, "synthetic_val") == val_names
    assert len(NuScenesCanBus(dataroot=str(root)).get_messages(extra[-1], "pose")) > 0


def test_bad_generator_arguments_are_named(tmp_path: Path):
    with pytest.raises(ValueError, match="num_scenes"):
        generate_synthetic_nuscenes(tmp_path / "a", SyntheticSpec(num_scenes=0))
    with pytest.raises(ValueError, match="num_scenes"):
        generate_synthetic_nuscenes(tmp_path / "a", SyntheticSpec(num_scenes=len(SCENE_NAMES) + 1))
    with pytest.raises(ValueError, match="samples_per_scene"):
        generate_synthetic_nuscenes(tmp_path / "b", SyntheticSpec(samples_per_scene=1))
