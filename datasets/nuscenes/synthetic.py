"""Writes a small synthetic dataset in the exact nuScenes on-disk format (loaded by the devkit as v1.0-mini).

Layout under ``root``: ``v1.0-mini/`` (13 tables + ``splits.json``), ``maps/*.png`` (placeholders),
``samples/<CHANNEL>/*.jpg|*.pcd.bin`` (keyframes), ``sweeps/<CAM>/*.jpg`` (camera sweeps, non-keyframe
images between two keyframes, with ``camera_sweeps`` > 0) and, optionally, ``can_bus/`` (pose, route,
meta per scene). Scene names are real ones: the ten mini scenes first, alternating train and val, so the
stock ``mini_train``/``mini_val`` splits work for up to 10 scenes; more scenes take trainval names, four
train scenes for each val scene. The custom ``synthetic_train``/``synthetic_val`` splits cover them all.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box, transform_matrix
from nuscenes.utils.splits import mini_train, mini_val, train, val
from pyquaternion import Quaternion

from datasets.nuscenes.calibration import N015_CALIBRATION
from datasets.nuscenes.can_bus import CAN_BUS_BLACKLIST
from datasets.nuscenes.constants import CAMERA_NAMES, LIDAR_NAME
from datasets.nuscenes.database import REQUIRED_TABLES
from datasets.nuscenes.synthetic_camera import camera_rays, draw_boxes, render_background, sun_direction
from datasets.nuscenes.synthetic_lidar import beam_directions, sweep
from datasets.nuscenes.synthetic_world import World, make_world

VERSION = "v1.0-mini"
SAMPLE_PERIOD_US = 500_000
FIRST_SCENE_START_US = 1_531_883_530_000_000
CHANNELS = (*CAMERA_NAMES, LIDAR_NAME)
#: Camera trigger delay after the lidar keyframe, in microseconds (the real rig fires within ~50 ms).
CAMERA_DELAY_US: dict[str, int] = {
    "CAM_FRONT": 12_500,
    "CAM_FRONT_RIGHT": 20_500,
    "CAM_BACK_RIGHT": 28_500,
    "CAM_BACK": 37_000,
    "CAM_BACK_LEFT": 45_000,
    "CAM_FRONT_LEFT": 4_500,
}
CAN_BUS_RATE_HZ = 50
#: Camera sweeps between two keyframes in real nuScenes (12 Hz cameras, 2 Hz keyframes).
NUSCENES_CAMERA_SWEEPS = 5


def _scene_names() -> tuple[str, ...]:
    """Scene names in generation order: the ten mini scenes first (train and val alternate so that even
    2 scenes cover both splits, and the devkit's ``mini_train``/``mini_val`` work), then further
    trainval scene names with CAN bus data, four train scenes for each val scene."""
    mini = (mini_train[0], mini_val[0], mini_train[1], mini_val[1], *mini_train[2:])
    usable = [name for name in (*train, *val) if name not in mini and int(name[-4:]) not in CAN_BUS_BLACKLIST]
    more_train = [name for name in usable if name in train]
    more_val = [name for name in usable if name in val]
    more = []
    for index, name in enumerate(more_val):
        more += [*more_train[4 * index : 4 * index + 4], name]
    return (*mini, *more)


SCENE_NAMES: tuple[str, ...] = _scene_names()


def _is_val_scene(name: str) -> bool:
    """The split of a scene name: a mini scene follows the mini splits, any other the trainval splits."""
    return name in mini_val or (name in val and name not in mini_train)


LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")
ALL_CATEGORIES = (
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.wheelchair",
    "human.pedestrian.stroller",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.construction_worker",
    "animal",
    "vehicle.car",
    "vehicle.motorcycle",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.truck",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.trailer",
    "movable_object.barrier",
    "movable_object.trafficcone",
    "movable_object.pushable_pullable",
    "movable_object.debris",
    "static_object.bicycle_rack",
)
ATTRIBUTES = (
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
VISIBILITY_LEVELS = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


@dataclass(frozen=True)
class SyntheticSpec:
    """Size of a generated dataset. ``image_size`` is (width, height) of every camera JPEG."""

    num_scenes: int = 4
    samples_per_scene: int = 6
    image_size: tuple[int, int] = (800, 450)
    objects_per_class: int = 2
    lidar_azimuths: int = 720
    seed: int = 0
    can_bus: bool = True
    camera_sweeps: int = 0  # non-keyframe images per camera between two keyframes (real nuScenes: 5)

    def validate(self) -> None:
        if not 1 <= self.num_scenes <= len(SCENE_NAMES):
            raise ValueError(
                f"num_scenes must be in [1, {len(SCENE_NAMES)}] (real nuScenes scene names, mini first), "
                f"got {self.num_scenes}"
            )
        if self.samples_per_scene < 2:
            raise ValueError(
                f"samples_per_scene must be >= 2 (velocities need two annotations), "
                f"got {self.samples_per_scene}"
            )
        if min(self.image_size) < 16 or len(self.image_size) != 2:
            raise ValueError(f"image_size must be (width, height) >= 16 pixels, got {self.image_size}")
        if self.objects_per_class < 1:
            raise ValueError(f"objects_per_class must be >= 1, got {self.objects_per_class}")
        if self.camera_sweeps < 0:
            raise ValueError(f"camera_sweeps must be >= 0, got {self.camera_sweeps}")


def _visibility_token(fraction: float) -> str:
    """nuScenes visibility token ("1".."4" for 0-40, 40-60, 60-80, 80-100 %) of a visible fraction."""
    return str(1 + int(np.searchsorted([0.4, 0.6, 0.8], fraction, side="right")))


def _quaternion_z(yaw: float) -> list[float]:
    return list(Quaternion(axis=(0.0, 0.0, 1.0), angle=yaw).elements)


@dataclass
class _Scene:
    """What the writer needs while writing one scene."""

    world: World
    start_us: int
    logfile: str
    calibrated_token: dict[str, str]
    previous_data: dict[str, str]  # channel -> last sample_data token ("" before the first)

    def seconds(self, timestamp: int) -> float:
        return (timestamp - self.start_us) * 1e-6

    def ego2global(self, timestamp: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Ego pose at ``timestamp``: (4, 4) matrix, position (3,), yaw."""
        position, yaw = self.world.ego_pose(self.seconds(timestamp))
        return transform_matrix(position, Quaternion(_quaternion_z(yaw))), position, yaw

    def object_boxes(self, timestamp: int) -> list[Box]:
        """Global boxes of all objects at ``timestamp``."""
        boxes = []
        for obj in self.world.objects:
            center, yaw = obj.pose(self.world.road, self.seconds(timestamp))
            boxes.append(Box(center, obj.size, Quaternion(_quaternion_z(yaw))))
        return boxes


class _Writer:
    """Accumulates the 13 tables and writes the sensor files of one dataset."""

    def __init__(self, root: Path, spec: SyntheticSpec) -> None:
        self.root = root
        self.spec = spec
        self.token_rng = np.random.default_rng([spec.seed, 1])
        self.rng = np.random.default_rng([spec.seed, 2])
        self.tables: dict[str, list[dict]] = {name: [] for name in REQUIRED_TABLES}
        self.category_token = {
            name: self._add("category", name=name, description=name) for name in ALL_CATEGORIES
        }
        self.attribute_token = {
            name: self._add("attribute", name=name, description=name) for name in ATTRIBUTES
        }
        for token, level in VISIBILITY_LEVELS:
            self.tables["visibility"].append(
                {"token": token, "level": level, "description": f"visibility {level}"}
            )
        self.sensor_token = {
            channel: self._add(
                "sensor", channel=channel, modality="lidar" if channel == LIDAR_NAME else "camera"
            )
            for channel in CHANNELS
        }
        self.sensor2ego = {
            channel: transform_matrix(np.array(cal.translation), Quaternion(cal.rotation))
            for channel, cal in N015_CALIBRATION.items()
        }
        self.intrinsic = {
            channel: N015_CALIBRATION[channel].intrinsic(spec.image_size) for channel in CAMERA_NAMES
        }
        self.rays = {
            channel: camera_rays(self.sensor2ego[channel], self.intrinsic[channel], spec.image_size)
            for channel in CAMERA_NAMES
        }
        self.beams, self.rings = beam_directions(spec.lidar_azimuths)
        self._sample_data_index: dict[str, int] = {}
        for channel in CHANNELS:
            (root / "samples" / channel).mkdir(parents=True, exist_ok=True)

    def token(self) -> str:
        return uuid.UUID(bytes=self.token_rng.bytes(16), version=4).hex

    def _add(self, table: str, token: str | None = None, **fields) -> str:
        record = {"token": token or self.token(), **fields}
        self.tables[table].append(record)
        return record["token"]

    def write_tables(self) -> None:
        table_dir = self.root / VERSION
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(records, indent=1))
        scene_names = [scene["name"] for scene in self.tables["scene"]]
        splits = {
            "synthetic_train": [name for name in scene_names if not _is_val_scene(name)],
            "synthetic_val": [name for name in scene_names if _is_val_scene(name)],
        }
        (table_dir / "splits.json").write_text(json.dumps(splits, indent=1))

    def write_maps(self, log_tokens_by_location: dict[str, list[str]]) -> None:
        """One placeholder map per location (the devkit needs one covering every log; eval never reads it)."""
        (self.root / "maps").mkdir(exist_ok=True)
        for log_tokens in log_tokens_by_location.values():
            token = self.token()
            filename = f"maps/{token}.png"
            cv2.imwrite(str(self.root / filename), np.full((100, 100), 200, np.uint8))
            self._add("map", token=token, log_tokens=log_tokens, category="semantic_prior", filename=filename)

    def write_scene(self, index: int) -> tuple[str, str]:
        """Write scene ``index`` with all its samples; returns (log token, location)."""
        spec = self.spec
        location = LOCATIONS[index % len(LOCATIONS)]
        world = make_world(
            self.rng, (spec.samples_per_scene - 1) * SAMPLE_PERIOD_US * 1e-6, spec.objects_per_class
        )
        start_us = FIRST_SCENE_START_US + index * 3_600_000_000
        date = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(start_us // 1_000_000))
        logfile = f"n015-{date}+0800"
        log_token = self._add(
            "log", logfile=logfile, vehicle="n015", date_captured=date[:10], location=location
        )
        calibrated_token = {
            channel: self._add(
                "calibrated_sensor",
                sensor_token=self.sensor_token[channel],
                translation=list(N015_CALIBRATION[channel].translation),
                rotation=list(N015_CALIBRATION[channel].rotation),
                camera_intrinsic=self.intrinsic[channel].tolist() if channel in self.intrinsic else [],
            )
            for channel in CHANNELS
        }
        scene = _Scene(world, start_us, logfile, calibrated_token, dict.fromkeys(CHANNELS, ""))
        scene_token = self.token()
        sample_tokens = [self.token() for _ in range(spec.samples_per_scene)]
        annotation_tokens = [[self.token() for _ in world.objects] for _ in sample_tokens]
        instance_tokens = [
            self._add(
                "instance",
                category_token=self.category_token[obj.spec.category],
                nbr_annotations=len(sample_tokens),
                first_annotation_token=annotation_tokens[0][k],
                last_annotation_token=annotation_tokens[-1][k],
            )
            for k, obj in enumerate(world.objects)
        ]
        for sample_index, sample_token in enumerate(sample_tokens):
            timestamp = start_us + sample_index * SAMPLE_PERIOD_US
            self.tables["sample"].append(
                {
                    "token": sample_token,
                    "timestamp": timestamp,
                    "scene_token": scene_token,
                    "prev": sample_tokens[sample_index - 1] if sample_index > 0 else "",
                    "next": sample_tokens[sample_index + 1] if sample_index + 1 < len(sample_tokens) else "",
                }
            )
            lidar_stats = self._write_lidar(scene, sample_token, timestamp)
            for channel in CAMERA_NAMES:
                keyframe_us = timestamp + CAMERA_DELAY_US[channel]
                if sample_index > 0:  # sweeps after the previous keyframe, in time order
                    for k in range(spec.camera_sweeps, 0, -1):
                        sweep_us = keyframe_us - k * SAMPLE_PERIOD_US // (spec.camera_sweeps + 1)
                        self._write_camera(scene, channel, sample_token, sweep_us, key_frame=False)
                self._write_camera(scene, channel, sample_token, keyframe_us)
            for obj_index, obj in enumerate(world.objects):
                center, yaw = obj.pose(world.road, scene.seconds(timestamp))
                self.tables["sample_annotation"].append(
                    {
                        "token": annotation_tokens[sample_index][obj_index],
                        "sample_token": sample_token,
                        "instance_token": instance_tokens[obj_index],
                        "visibility_token": _visibility_token(lidar_stats[obj_index, 1]),
                        "attribute_tokens": [self.attribute_token[obj.attribute]] if obj.attribute else [],
                        "translation": center.tolist(),
                        "size": list(obj.size),
                        "rotation": _quaternion_z(yaw),
                        "prev": annotation_tokens[sample_index - 1][obj_index] if sample_index > 0 else "",
                        "next": annotation_tokens[sample_index + 1][obj_index]
                        if sample_index + 1 < len(sample_tokens)
                        else "",
                        "num_lidar_pts": int(lidar_stats[obj_index, 0]),
                        "num_radar_pts": 0,
                    }
                )
        self.tables["scene"].append(
            {
                "token": scene_token,
                "name": SCENE_NAMES[index],
                "description": f"synthetic {location} scene",
                "log_token": log_token,
                "nbr_samples": len(sample_tokens),
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
            }
        )
        if spec.can_bus:
            self._write_can_bus(scene, SCENE_NAMES[index])
        return log_token, location

    def _add_sample_data(
        self,
        scene: _Scene,
        channel: str,
        sample_token: str,
        timestamp: int,
        filename: str,
        size: tuple[int, int],
        key_frame: bool = True,
    ) -> str:
        """Add a sample_data row and its ego_pose (same token), chained after the channel's last. A sweep
        (``key_frame`` False) belongs to the sample of the next keyframe, as in nuScenes."""
        token = self.token()
        _, position, yaw = scene.ego2global(timestamp)
        self.tables["ego_pose"].append(
            {
                "token": token,
                "timestamp": timestamp,
                "translation": position.tolist(),
                "rotation": _quaternion_z(yaw),
            }
        )
        previous = scene.previous_data[channel]
        if previous:
            self.tables["sample_data"][self._sample_data_index[previous]]["next"] = token
        self._sample_data_index[token] = len(self.tables["sample_data"])
        self.tables["sample_data"].append(
            {
                "token": token,
                "sample_token": sample_token,
                "ego_pose_token": token,
                "calibrated_sensor_token": scene.calibrated_token[channel],
                "timestamp": timestamp,
                "fileformat": "pcd" if channel == LIDAR_NAME else "jpg",
                "is_key_frame": key_frame,
                "height": size[1],
                "width": size[0],
                "filename": filename,
                "prev": previous,
                "next": "",
            }
        )
        scene.previous_data[channel] = token
        return token

    def _write_lidar(self, scene: _Scene, sample_token: str, timestamp: int) -> np.ndarray:
        """Write a LIDAR_TOP keyframe; returns (K, 2) [num_lidar_pts, visibility fraction] per object."""
        ego2global, _, ego_yaw = scene.ego2global(timestamp)
        global2lidar = np.linalg.inv(ego2global @ self.sensor2ego[LIDAR_NAME])
        boxes = scene.object_boxes(timestamp)
        centers_ego = np.array([np.linalg.solve(ego2global, [*box.center, 1.0])[:3] for box in boxes])
        yaws_ego = np.array([box.orientation.yaw_pitch_roll[0] - ego_yaw for box in boxes])
        sizes = np.array([box.wlh for box in boxes])
        for box in boxes:  # now into the lidar frame
            box.rotate(Quaternion(matrix=global2lidar[:3, :3]))
            box.translate(global2lidar[:3, 3])
        corners_lidar = np.stack([box.corners().T for box in boxes])
        scan = sweep(
            self.sensor2ego[LIDAR_NAME],
            centers_ego,
            sizes,
            yaws_ego,
            corners_lidar,
            self.beams,
            self.rings,
            self.rng,
        )
        points = scan.points[:, :3].T.astype(np.float64)
        counts = [int(points_in_box(box, points).sum()) for box in boxes]
        filename = f"samples/{LIDAR_NAME}/{scene.logfile}__{LIDAR_NAME}__{timestamp}.pcd.bin"
        scan.points.tofile(self.root / filename)
        self._add_sample_data(scene, LIDAR_NAME, sample_token, timestamp, filename, (0, 0))
        return np.stack([np.array(counts, dtype=np.float64), scan.visibility], 1)

    def _write_camera(
        self, scene: _Scene, channel: str, sample_token: str, timestamp: int, key_frame: bool = True
    ) -> None:
        """Render and write one camera image (a keyframe into ``samples/``, a sweep into ``sweeps/``),
        objects placed where they are at the camera's own time."""
        ego2global, _, _ = scene.ego2global(timestamp)
        global2cam = np.linalg.inv(ego2global @ self.sensor2ego[channel])
        ego_s = scene.world.ego_speed * scene.seconds(timestamp)
        image = render_background(self.rays[channel], scene.world.road, ego2global, ego_s)
        boxes = scene.object_boxes(timestamp)
        corners = np.stack([box.corners().T for box in boxes]) @ global2cam[:3, :3].T + global2cam[:3, 3]
        rotations = np.stack([global2cam[:3, :3] @ box.rotation_matrix for box in boxes])
        colors = np.array([obj.spec.color for obj in scene.world.objects], dtype=np.float64)
        draw_boxes(image, corners, rotations, colors, sun_direction(global2cam), self.intrinsic[channel])
        folder = "samples" if key_frame else "sweeps"
        filename = f"{folder}/{channel}/{scene.logfile}__{channel}__{timestamp}.jpg"
        (self.root / folder / channel).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(self.root / filename), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        self._add_sample_data(
            scene, channel, sample_token, timestamp, filename, self.spec.image_size, key_frame
        )

    def _write_can_bus(self, scene: _Scene, scene_name: str) -> None:
        """CAN bus pose (50 Hz, from 1 s before to 1 s after the scene), route and meta files of a scene."""
        can_dir = self.root / "can_bus"
        can_dir.mkdir(exist_ok=True)
        world = scene.world
        duration = (self.spec.samples_per_scene - 1) * SAMPLE_PERIOD_US * 1e-6
        speed, yaw_rate = world.ego_speed, world.ego_speed * world.road.curvature
        poses = []
        for seconds in np.arange(-1.0, duration + 1.0, 1.0 / CAN_BUS_RATE_HZ):
            position, yaw = world.ego_pose(float(seconds))
            poses.append(
                {
                    "accel": [0.0, speed * yaw_rate, 9.81],
                    "orientation": _quaternion_z(yaw),
                    "pos": position.tolist(),
                    "rotation_rate": [0.0, 0.0, yaw_rate],
                    "utime": int(scene.start_us + round(seconds * 1e6)),
                    "vel": [speed, 0.0, 0.0],
                }
            )
        route_s = np.arange(-50.0, speed * duration + 50.0, 5.0)
        route = world.road.point(route_s, np.zeros_like(route_s)).tolist()
        (can_dir / f"{scene_name}_pose.json").write_text(json.dumps(poses))
        (can_dir / f"{scene_name}_route.json").write_text(json.dumps(route))
        (can_dir / f"{scene_name}_meta.json").write_text(json.dumps({"pose": {"rate_hz": CAN_BUS_RATE_HZ}}))


def generate_synthetic_nuscenes(root: str | Path, spec: SyntheticSpec | None = None) -> Path:
    """Write a synthetic nuScenes dataset described by ``spec`` (default: :class:`SyntheticSpec`) to ``root``.

    Returns the dataset root, loadable with ``NuScenes('v1.0-mini', root)``.
    """
    spec = spec or SyntheticSpec()
    spec.validate()
    root = Path(root)
    if (root / VERSION).exists():
        raise FileExistsError(f"{root / VERSION} already exists; choose an empty output directory")
    writer = _Writer(root, spec)
    logs_by_location: dict[str, list[str]] = {}
    for index in range(spec.num_scenes):
        log_token, location = writer.write_scene(index)
        logs_by_location.setdefault(location, []).append(log_token)
    writer.write_maps(logs_by_location)
    writer.write_tables()
    return root
