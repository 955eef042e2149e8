"""Infos built through the devkit: projection matrices, schema, CAN bus, and errors that name the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from nuscenes_fixtures import dataset, nusc, val_infos  # noqa: F401

from datasets.nuscenes.boxes import box_corners
from datasets.nuscenes.constants import CAMERA_NAMES, CAN_BUS_DIM, CLASS_NAMES
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.infos import INFOS_FORMAT_VERSION, build_infos, infos_path, load_infos, save_infos
from datasets.nuscenes.synthetic import VERSION
from tools.create_data import main as create_data_main

NEAR = 0.5


def _project(points: np.ndarray, lidar2img: np.ndarray) -> np.ndarray:
    projected = np.concatenate([points, np.ones((len(points), 1))], 1) @ np.asarray(lidar2img).T
    return projected[:, :2] / projected[:, 2:3]


def test_lidar2img_matches_the_devkit_camera_projection(nusc, val_infos):  # noqa: F811
    """Devkit: box -> camera frame (get_sample_data) -> view_points(K). Ours: the same box in the lidar frame
    through the infos' lidar2img. The (K, 9) rows must project their centres equally well; their corners
    differ from the tilted exact box by a few cm."""
    worst_exact, worst_center, worst_corner, compared = 0.0, 0.0, 0.0, 0
    for sample in val_infos["samples"][::3]:
        global2lidar = np.linalg.inv(np.asarray(sample["lidar2global"]))
        gt_boxes = dict(
            zip(sample["gt"]["annotation_tokens"], np.asarray(sample["gt"]["boxes"]), strict=True)
        )
        for channel in CAMERA_NAMES:
            camera = sample["cameras"][channel]
            _, boxes_cam, intrinsic = nusc.get_sample_data(camera["token"], box_vis_level=BoxVisibility.NONE)
            for box_cam in boxes_cam:
                if box_cam.corners()[2].min() < NEAR:
                    continue
                devkit_pixels = view_points(box_cam.corners(), intrinsic, normalize=True)[:2].T
                box = nusc.get_box(box_cam.token)
                box.rotate(type(box.orientation)(matrix=global2lidar[:3, :3]))
                box.translate(global2lidar[:3, 3])
                ours = _project(box.corners().T, camera["lidar2img"])
                worst_exact = max(worst_exact, np.abs(ours - devkit_pixels).max())
                row = gt_boxes[box_cam.token]
                center = _project(row[None, :3], camera["lidar2img"])[0]
                devkit_center = view_points(box_cam.center[:, None], intrinsic, normalize=True)[:2, 0]
                worst_center = max(worst_center, np.abs(center - devkit_center).max())
                worst_corner = max(
                    worst_corner, np.linalg.norm(box_corners(row[None])[0] - box.corners().T, axis=1).max()
                )
                compared += 1
    print(
        f"\n{compared} boxes: exact box {worst_exact:.2e} px, (K, 9) centre {worst_center:.2e} px, "
        f"(K, 9) corners off by up to {worst_corner:.3f} m (yaw-only boxes ignore the lidar's 1.4 deg tilt)"
    )
    assert compared > 50
    assert worst_exact < 0.5 and worst_center < 0.5
    assert worst_corner < 0.2


def test_infos_schema_and_ground_truth(val_infos):  # noqa: F811
    assert val_infos["format_version"] == INFOS_FORMAT_VERSION and val_infos["version"] == VERSION
    assert val_infos["camera_names"] == list(CAMERA_NAMES)
    first, second = val_infos["samples"][:2]
    assert first["frame_index"] == 0 and first["prev"] == "" and first["next"] == second["token"]
    assert second["prev"] == first["token"] and second["frame_index"] == 1
    gt = first["gt"]
    boxes = np.asarray(gt["boxes"])
    assert boxes.shape == (len(gt["names"]), 9) and np.all(boxes[:, 3:6] > 0)
    assert set(gt["names"]) - set(CLASS_NAMES) == {"movable_object.pushable_pullable"}
    assert all(gt["velocity_valid"]) and gt["valid_flag"] == [n > 0 for n in gt["num_lidar_pts"]]
    for camera in first["cameras"].values():
        intrinsic4 = np.eye(4)
        intrinsic4[:3, :3] = camera["intrinsic"]
        assert np.allclose(camera["lidar2img"], intrinsic4 @ np.linalg.inv(camera["sensor2lidar"]))
    assert np.allclose(
        first["lidar2global"],
        np.asarray(first["lidar"]["ego2global"]) @ np.asarray(first["lidar"]["lidar2ego"]),
    )


def test_can_bus_vector_combines_ego_pose_and_messages(val_infos):  # noqa: F811
    sample = val_infos["samples"][2]
    can_bus = np.asarray(sample["can_bus"])
    ego2global = np.asarray(sample["lidar"]["ego2global"])
    assert can_bus.shape == (CAN_BUS_DIM,) and sample["can_bus_from_messages"]
    assert np.allclose(can_bus[:3], ego2global[:3, 3])
    yaw = np.arctan2(ego2global[1, 0], ego2global[0, 0]) % (2 * np.pi)
    assert np.isclose(can_bus[16], yaw) and np.isclose(can_bus[17], np.rad2deg(yaw))
    assert can_bus[9] == pytest.approx(9.81) and can_bus[13] > 0  # accel z (gravity), forward speed


@pytest.fixture
def tables_copy(dataset, tmp_path: Path) -> Path:  # noqa: F811
    """A copy of the tables only (no sensor files), to break."""
    shutil.copytree(dataset.root / VERSION, tmp_path / VERSION)
    shutil.copytree(dataset.root / "maps", tmp_path / "maps")
    return tmp_path


def test_missing_table_is_named(tables_copy: Path):
    (tables_copy / VERSION / "instance.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing table\(s\): instance\.json"):
        open_nuscenes(tables_copy, VERSION)


def test_wrong_version_is_named(tables_copy: Path):
    with pytest.raises(FileNotFoundError, match=r"'v1\.0-trainval' not found.*found in .*\['v1\.0-mini'\]"):
        open_nuscenes(tables_copy, "v1.0-trainval")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_nuscenes(tables_copy / "nowhere", VERSION)


def test_split_errors_are_named(nusc, tables_copy: Path):  # noqa: F811
    with pytest.raises(ValueError, match=r"split 'val' needs a version ending in 'trainval'"):
        build_infos(nusc, "val")
    (tables_copy / VERSION / "splits.json").write_text(json.dumps({"nothing": ["scene-0999"]}))
    copy = open_nuscenes(tables_copy, VERSION)
    with pytest.raises(ValueError, match=r"split 'nothing' is empty"):
        build_infos(copy, "nothing")
    with pytest.raises(ValueError, match=r"unknown split 'typo'"):
        build_infos(copy, "typo")


def test_load_infos_rejects_other_format_versions(val_infos, tmp_path: Path):  # noqa: F811
    path = save_infos({**val_infos, "format_version": 0}, tmp_path / "old.json")
    with pytest.raises(ValueError, match="format_version 0"):
        load_infos(path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_infos(tmp_path / "bad.json")


def test_create_data_command_line_writes_loadable_infos(dataset, tmp_path: Path):  # noqa: F811
    create_data_main(
        [
            "nuscenes",
            "--root",
            str(dataset.root),
            "--version",
            VERSION,
            "--out",
            str(tmp_path),
            "--splits",
            "synthetic_val",
        ]
    )
    infos = load_infos(infos_path(tmp_path, "synthetic_val"))
    reference = load_infos(infos_path(dataset.infos_dir, "mini_val"))
    assert [s["token"] for s in infos["samples"]] == [s["token"] for s in reference["samples"]]
    create_data_main(
        [
            "synthetic-nuscenes",
            "--out",
            str(tmp_path / "tiny"),
            "--scenes",
            "1",
            "--samples",
            "2",
            "--image-size",
            "64",
            "36",
            "--no-can-bus",
        ]
    )
    tiny = open_nuscenes(tmp_path / "tiny", VERSION)
    assert len(tiny.sample) == 2 and not (tmp_path / "tiny" / "can_bus").exists()
    create_data_main(
        ["nuscenes", "--root", str(tmp_path / "tiny"), "--version", VERSION, "--out", str(tmp_path)]
    )
    assert not infos_path(tmp_path, "mini_val").exists()  # its only scene is a mini_train scene
    tiny_infos = load_infos(infos_path(tmp_path, "mini_train"))
    assert len(tiny_infos["samples"]) == 2 and not tiny_infos["samples"][0]["can_bus_from_messages"]
