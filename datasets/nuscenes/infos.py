"""The per-sample index ("infos") of a nuScenes split, built with the devkit and stored as versioned JSON.

Schema (``INFOS_FORMAT``, ``format_version`` 2; version 1 files, without ``sweeps``, are still read);
matrices are nested lists, 4 x 4 are rigid or projective transforms acting on column vectors
``[x, y, z, 1]``::

    {"format": "deformbev.nuscenes_infos", "format_version": 2,
     "version": "v1.0-mini", "split": "mini_val", "dataroot": "/abs/path",
     "class_names": [10 names], "camera_names": [6 names], "can_bus_root": str | null,
     "samples": [{
        "token", "scene_token", "scene_name", "timestamp" (us), "prev", "next" ("" at scene ends),
        "frame_index" (position in the scene),
        "lidar": {"token", "path" (relative to dataroot), "timestamp", "lidar2ego" 4x4, "ego2global" 4x4},
        "lidar2global": 4x4,
        "can_bus": [18] (see can_bus.py), "can_bus_from_messages": bool,
        "cameras": {CAM_*: {"token", "path", "timestamp", "width", "height",
                            "intrinsic" 3x3, "sensor2lidar" 4x4, "lidar2img" 4x4}},
        "gt": {"boxes": K x 9 [x, y, z, w, l, h, yaw, vx, vy] lidar frame (boxes.py; unknown velocity 0),
               "velocity_valid": [K bool], "names": [K] (detection class, or the raw category name when the
               category is none of the 10), "attributes": [K] ("" if none), "num_lidar_pts": [K],
               "num_radar_pts": [K], "valid_flag": [K bool] (num_lidar_pts + num_radar_pts > 0),
               "instance_tokens": [K], "annotation_tokens": [K]},
        "sweeps": [earlier camera frames, newest first: {CAM_*: {"token", "path", "timestamp", "width",
                   "height", "intrinsic" 3x3, "sensor2ego" 4x4, "ego2global" 4x4 (at that image's time)}}]}]}

``lidar2img = K4 @ inv(sensor2lidar)`` with ``sensor2lidar = inv(lidar2global) @ ego2global(camera time)
@ sensor2ego``: every camera uses its own sample_data's ego pose.

``sweeps`` (PETRv2's earlier frame): the i-th entry holds every camera's (i+1)-th earlier image (camera
sweeps at ~12 Hz and earlier keyframes), walking each camera's sample_data chain back to the keyframe of
the scene's first sample, at most ``max_sweeps`` deep (the shortest camera chain bounds the list); empty at a
scene's first sample (the original's ``tools/generate_sweep_pkl.py`` keeps 30, of which PETRv2 reads at
most the 27th). :func:`sweep_lidar2img` maps the sample's CURRENT lidar frame into such an image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.splits import create_splits_scenes

from datasets.files import read_json
from datasets.nuscenes.boxes import BOX_DIM, global_boxes_to_lidar
from datasets.nuscenes.can_bus import CanBusReader
from datasets.nuscenes.constants import CAMERA_NAMES, CLASS_NAMES, LIDAR_NAME
from datasets.nuscenes.database import check_nuscenes_root, open_nuscenes, pose_matrix
from datasets.nuscenes.splits import available_splits, sample_tokens_of_split, splits_with_samples

INFOS_FORMAT = "deformbev.nuscenes_infos"
INFOS_FORMAT_VERSION = 2
#: Versions :func:`load_infos` reads (1: before ``sweeps``).
READABLE_FORMAT_VERSIONS = (1, 2)
#: Earlier camera frames kept per sample by default: the farthest of PETRv2's training range (27th).
MAX_SWEEPS = 27
#: The splits whose scenes a released version's tables hold exactly (850 / 150 scenes).
RELEASED_VERSION_SCENES = {"v1.0-trainval": ("train", "val"), "v1.0-test": ("test",)}
SAMPLE_KEYS = frozenset(
    (
        "token",
        "scene_token",
        "scene_name",
        "timestamp",
        "prev",
        "next",
        "frame_index",
        "lidar",
        "lidar2global",
        "can_bus",
        "can_bus_from_messages",
        "cameras",
        "gt",
    )
)
GT_KEYS = frozenset(
    (
        "boxes",
        "velocity_valid",
        "names",
        "attributes",
        "num_lidar_pts",
        "num_radar_pts",
        "valid_flag",
        "instance_tokens",
        "annotation_tokens",
    )
)


def _ground_truth(nusc: NuScenes, sample: dict, lidar2global: np.ndarray) -> dict[str, list]:
    annotations = [nusc.get("sample_annotation", token) for token in sample["anns"]]
    attribute_names = {record["token"]: record["name"] for record in nusc.attribute}
    velocities = np.array([nusc.box_velocity(a["token"])[:2] for a in annotations]).reshape(-1, 2)
    velocity_valid = np.isfinite(velocities).all(1)
    boxes = global_boxes_to_lidar(
        np.array([a["translation"] for a in annotations]).reshape(-1, 3),
        np.array([a["size"] for a in annotations]).reshape(-1, 3),
        np.array([a["rotation"] for a in annotations]).reshape(-1, 4),
        np.where(velocity_valid[:, None], velocities, 0.0),
        lidar2global,
    ).reshape(-1, BOX_DIM)
    return {
        "boxes": boxes.tolist(),
        "velocity_valid": velocity_valid.tolist(),
        "names": [category_to_detection_name(a["category_name"]) or a["category_name"] for a in annotations],
        "attributes": [
            attribute_names[a["attribute_tokens"][0]] if a["attribute_tokens"] else "" for a in annotations
        ],
        "num_lidar_pts": [a["num_lidar_pts"] for a in annotations],
        "num_radar_pts": [a["num_radar_pts"] for a in annotations],
        "valid_flag": [a["num_lidar_pts"] + a["num_radar_pts"] > 0 for a in annotations],
        "instance_tokens": [a["instance_token"] for a in annotations],
        "annotation_tokens": [a["token"] for a in annotations],
    }


def _camera_entry(nusc: NuScenes, data: dict) -> dict[str, Any]:
    """One earlier camera image of ``sweeps`` (schema in the module docstring)."""
    calibration = nusc.get("calibrated_sensor", data["calibrated_sensor_token"])
    return {
        "token": data["token"],
        "path": data["filename"],
        "timestamp": data["timestamp"],
        "width": data["width"],
        "height": data["height"],
        "intrinsic": calibration["camera_intrinsic"],
        "sensor2ego": pose_matrix(calibration).tolist(),
        "ego2global": pose_matrix(nusc.get("ego_pose", data["ego_pose_token"])).tolist(),
    }


def _camera_sweeps(nusc: NuScenes, sample: dict, max_sweeps: int) -> list[dict[str, dict[str, Any]]]:
    """The earlier camera frames of ``sample`` (``sweeps`` in the module docstring)."""
    if not sample["prev"] or max_sweeps == 0:
        return []
    chains = {}
    for channel in CAMERA_NAMES:
        record, chain = nusc.get("sample_data", sample["data"][channel]), []
        while len(chain) < max_sweeps and record["prev"]:
            record = nusc.get("sample_data", record["prev"])
            chain.append(_camera_entry(nusc, record))
            if record["is_key_frame"] and not nusc.get("sample", record["sample_token"])["prev"]:
                break  # the scene's first keyframe
        chains[channel] = chain
    depth = min(len(chain) for chain in chains.values())
    return [{channel: chains[channel][i] for channel in CAMERA_NAMES} for i in range(depth)]


def sweep_lidar2img(lidar2global: np.ndarray, camera: dict[str, Any]) -> np.ndarray:
    """(4, 4) float64 map from the CURRENT lidar frame (``lidar2global`` of the sample) into an earlier
    image (an entry of ``sweeps``): current lidar -> global -> that image's ego -> camera -> pixels, so
    the ego motion between the frames is folded in."""
    intrinsic4 = np.eye(4)
    intrinsic4[:3, :3] = np.asarray(camera["intrinsic"], dtype=np.float64)
    cam2global = np.asarray(camera["ego2global"], np.float64) @ np.asarray(camera["sensor2ego"], np.float64)
    global2cam = np.linalg.inv(cam2global)
    return intrinsic4 @ global2cam @ np.asarray(lidar2global, dtype=np.float64)


def _sample_info(
    nusc: NuScenes, sample: dict, frame_index: int, can_bus: CanBusReader, max_sweeps: int
) -> dict[str, Any]:
    missing = [channel for channel in (*CAMERA_NAMES, LIDAR_NAME) if channel not in sample["data"]]
    if missing:
        raise ValueError(f"sample {sample['token']} has no keyframe sample_data for channel(s) {missing}")
    scene_name = nusc.get("scene", sample["scene_token"])["name"]
    lidar_data = nusc.get("sample_data", sample["data"][LIDAR_NAME])
    lidar_pose = nusc.get("ego_pose", lidar_data["ego_pose_token"])
    lidar2ego = pose_matrix(nusc.get("calibrated_sensor", lidar_data["calibrated_sensor_token"]))
    ego2global = pose_matrix(lidar_pose)
    lidar2global = ego2global @ lidar2ego
    global2lidar = np.linalg.inv(lidar2global)
    cameras = {}
    for channel in CAMERA_NAMES:
        data = nusc.get("sample_data", sample["data"][channel])
        calibration = nusc.get("calibrated_sensor", data["calibrated_sensor_token"])
        sensor2lidar = (
            global2lidar
            @ pose_matrix(nusc.get("ego_pose", data["ego_pose_token"]))
            @ pose_matrix(calibration)
        )
        intrinsic = np.array(calibration["camera_intrinsic"], dtype=np.float64)
        if intrinsic.shape != (3, 3):
            raise ValueError(
                f"calibrated_sensor {calibration['token']} of {channel} has camera_intrinsic of "
                f"shape {intrinsic.shape}, expected (3, 3)"
            )
        intrinsic4 = np.eye(4)
        intrinsic4[:3, :3] = intrinsic
        cameras[channel] = {
            "token": data["token"],
            "path": data["filename"],
            "timestamp": data["timestamp"],
            "width": data["width"],
            "height": data["height"],
            "intrinsic": intrinsic.tolist(),
            "sensor2lidar": sensor2lidar.tolist(),
            "lidar2img": (intrinsic4 @ np.linalg.inv(sensor2lidar)).tolist(),
        }
    can_bus_vector, from_messages = can_bus.vector(
        scene_name, sample["timestamp"], lidar_pose["translation"], lidar_pose["rotation"]
    )
    return {
        "token": sample["token"],
        "scene_token": sample["scene_token"],
        "scene_name": scene_name,
        "timestamp": sample["timestamp"],
        "prev": sample["prev"],
        "next": sample["next"],
        "frame_index": frame_index,
        "lidar": {
            "token": lidar_data["token"],
            "path": lidar_data["filename"],
            "timestamp": lidar_data["timestamp"],
            "lidar2ego": lidar2ego.tolist(),
            "ego2global": ego2global.tolist(),
        },
        "lidar2global": lidar2global.tolist(),
        "can_bus": can_bus_vector.tolist(),
        "can_bus_from_messages": from_messages,
        "cameras": cameras,
        "gt": _ground_truth(nusc, sample, lidar2global),
        "sweeps": _camera_sweeps(nusc, sample, max_sweeps),
    }


def build_infos(
    nusc: NuScenes, split: str, can_bus_root: str | Path | None = None, max_sweeps: int = MAX_SWEEPS
) -> dict[str, Any]:
    """Infos (schema in the module docstring) of every sample of ``split``.

    Args:
        nusc: a loaded database (see :func:`datasets.nuscenes.database.open_nuscenes`).
        split: predefined split fitting ``nusc.version`` or a custom split of ``splits.json``.
        can_bus_root: directory holding ``can_bus/`` (``NuScenesCanBus`` convention), or None for zeros.
        max_sweeps: earlier camera frames kept per sample (``sweeps``; 0: none).
    """
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    reader = CanBusReader(can_bus_root)
    samples = []
    frame_index = 0
    for token in sample_tokens_of_split(nusc, split):
        sample = nusc.get("sample", token)
        frame_index = frame_index + 1 if sample["prev"] else 0
        samples.append(_sample_info(nusc, sample, frame_index, reader, max_sweeps))
    return {
        "format": INFOS_FORMAT,
        "format_version": INFOS_FORMAT_VERSION,
        "version": nusc.version,
        "split": split,
        "dataroot": str(Path(nusc.dataroot).resolve()),
        "class_names": list(CLASS_NAMES),
        "camera_names": list(CAMERA_NAMES),
        "can_bus_root": None if can_bus_root is None else str(can_bus_root),
        "samples": samples,
    }


def find_can_bus_root(root: str | Path) -> Path | None:
    """``root`` if it holds ``can_bus/``, else its parent if that does (BEVFormer's layout), else None."""
    for candidate in (Path(root), Path(root).resolve().parent):
        if (candidate / "can_bus").is_dir():
            return candidate
    return None


def infos_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"nuscenes_infos_{split}.json"


def save_infos(infos: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(infos, allow_nan=False))
    return path


def create_nuscenes_infos(
    root: str | Path,
    version: str,
    out_dir: str | Path,
    splits: list[str] | None = None,
    can_bus_root: str | Path | None = None,
    max_sweeps: int = MAX_SWEEPS,
) -> list[Path]:
    """Write ``nuscenes_infos_<split>.json`` into ``out_dir`` for ``splits`` (default: every predefined split
    that fits ``version`` and every custom split, skipping those without scenes in the database).
    ``can_bus_root`` defaults to :func:`find_can_bus_root`; ``max_sweeps`` as :func:`build_infos`. Returns
    the written paths.

    Raises:
        FileNotFoundError: the database is incomplete (:func:`check_nuscenes_root`), or a map file of
            the ``map`` table is missing (named).
        ValueError: the tables do not hold the scenes of ``version`` (:func:`check_tables_fit_version`).
    """
    check_tables_fit_version(root, version)
    nusc = open_nuscenes(root, version)
    splits = splits or splits_with_samples(nusc)
    if not splits:
        raise ValueError(f"no split of {root}/{version} has samples (splits: {available_splits(nusc)})")
    can_bus_root = can_bus_root if can_bus_root is not None else find_can_bus_root(root)
    return [
        save_infos(build_infos(nusc, split, can_bus_root, max_sweeps), infos_path(out_dir, split))
        for split in splits
    ]


def check_tables_fit_version(root: str | Path, version: str) -> None:
    """Refuse tables that are not those of ``version`` and name a missing map file, before the devkit
    (which would write infos of a few samples for mini tables under a trainval name, or fail on a bare
    ``AssertionError`` for a missing ``maps/*.png``).

    A released ``v1.0-trainval`` / ``v1.0-test`` has exactly the scenes of its splits (850 / 150);
    ``v1.0-mini`` is not checked, as custom data (e.g. the synthetic set) extend it.

    Raises:
        FileNotFoundError: the database is incomplete (:func:`check_nuscenes_root`), or a map file
            listed in the ``map`` table does not exist (named with the table).
        ValueError: naming the version, its table folder, the scene counts found and expected, and a
            few scenes that do not belong to it.
    """
    table_dir = check_nuscenes_root(root, version)
    expected = RELEASED_VERSION_SCENES.get(version)
    if expected is not None:
        names = {scene["name"] for scene in read_json(table_dir / "scene.json", "nuScenes scene table")}
        wanted = {name for split in expected for name in create_splits_scenes()[split]}
        foreign = sorted(names - wanted)
        if len(names) != len(wanted) or foreign:
            mini = {name for split in ("mini_train", "mini_val") for name in create_splits_scenes()[split]}
            hint = " (the scenes of v1.0-mini)" if names == mini else ""
            raise ValueError(
                f"nuScenes version {version!r} ({table_dir}) holds {len(names)} scenes{hint}, expected the "
                f"{len(wanted)} scenes of splits {list(expected)}; {len(foreign)} are not of this version"
                + (f", e.g. {foreign[:5]}" if foreign else "")
                + ": pass the --version these tables were released as"
            )
    map_table = table_dir / "map.json"
    for record in read_json(map_table, "nuScenes map table"):
        path = Path(root) / record["filename"]
        if not path.is_file():
            raise FileNotFoundError(
                f"map file {path} listed in {map_table} (token {record['token']}) not found; the devkit "
                "opens every map mask (download the maps with the nuScenes metadata)"
            )


def load_infos(path: str | Path) -> dict[str, Any]:
    """Read and check an infos file; ValueError naming the file and the problem on an empty, binary,
    truncated or otherwise malformed file or a wrong format."""
    path = Path(path)
    infos = read_json(path, "nuScenes infos")
    if not isinstance(infos, dict) or infos.get("format") != INFOS_FORMAT:
        raise ValueError(f"{path} is not a nuScenes infos file of format {INFOS_FORMAT!r}")
    version = infos.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise ValueError(
            f"{path} has infos format_version {version!r}; this code reads versions "
            f"{list(READABLE_FORMAT_VERSIONS)}: rebuild it with tools/create_data.py nuscenes"
        )
    sample_keys = SAMPLE_KEYS | ({"sweeps"} if version >= 2 else set())
    for index, sample in enumerate(infos.get("samples", [])):
        missing = (sample_keys - sample.keys()) or (GT_KEYS - sample["gt"].keys())
        if missing:
            raise ValueError(f"{path}: sample {index} lacks key(s) {sorted(missing)}")
        if set(sample["cameras"]) != set(infos["camera_names"]):
            raise ValueError(
                f"{path}: sample {index} has cameras {sorted(sample['cameras'])}, "
                f"expected {infos['camera_names']}"
            )
    check_camera_matrices(infos, f"infos file {path}")
    return infos


def check_sweeps(infos: dict[str, Any], source: str) -> None:
    """Refuse infos without earlier camera frames where a PETRv2 config needs them (``data.prev_frame``).

    Raises:
        ValueError: naming ``source`` and its format version (version 1 predates ``sweeps``), or the
            infos were written with ``max_sweeps`` 0 (no sample past a scene's first has sweeps).
    """
    samples = infos.get("samples", [])
    if any("sweeps" not in sample for sample in samples):
        raise ValueError(
            f"{source} (infos format_version {infos.get('format_version')!r}) has no camera sweeps, which "
            f"data.prev_frame (PETRv2's earlier frame) needs: rebuild it with tools/create_data.py nuscenes "
            f"(format_version {INFOS_FORMAT_VERSION})"
        )
    if any(sample["prev"] for sample in samples) and not any(sample["sweeps"] for sample in samples):
        raise ValueError(
            f"{source} holds no camera sweeps for any sample (written with --max-sweeps 0?), which "
            "data.prev_frame (PETRv2's earlier frame) needs: rebuild it with tools/create_data.py nuscenes"
        )


def check_camera_matrices(infos: dict[str, Any], source: str) -> None:
    """Refuse a camera whose ``lidar2img`` is not a finite 4x4 matrix (a NaN would make the camera
    silently blind: no point projects into it).

    Args:
        infos: the infos (``samples[i]["cameras"][channel]["lidar2img"]``).
        source: the infos file (or what the infos are), for the message.

    Raises:
        ValueError: naming ``source``, the sample token and the camera.
    """
    for sample in infos.get("samples", []):
        for channel, camera in sample["cameras"].items():
            matrix = np.asarray(camera["lidar2img"], dtype=np.float64)
            if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
                raise ValueError(
                    f"{source}: camera {channel} of sample {sample['token']} has lidar2img "
                    f"{matrix.tolist()}; expected a finite 4x4 matrix (rebuild the infos with "
                    "tools/create_data.py nuscenes)"
                )
