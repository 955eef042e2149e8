"""The 18-value CAN bus vector of BEVFormer, read from nuScenes CAN bus ``pose`` messages.

Absolute layout (the infos' ``can_bus``; BEVFormer's ``get_data_info``): ``[0:3]`` ego position in the
global frame (m), ``[3:7]`` ego rotation quaternion wxyz, ``[7:10]`` accel, ``[10:13]`` rotation_rate,
``[13:16]`` vel, ``[16]`` ego yaw ("patch angle") in radians and ``[17]`` in degrees, both from
[0, 360) degrees. Position, rotation and yaw come from the sample's (lidar keyframe's) ego pose, as
BEVFormer overwrites them; accel, rotation_rate and vel come from the last pose message at or before the
sample time, read by name (BEVFormer's converter reads them from the following message by mistake).

The model turns a queue of these into BEVFormer's input (``union2one``: ``[0:3]`` and ``[17]`` become
the change since the previous frame, 0 where there is none): :func:`bev.temporal_alignment.published_can_bus`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from nuscenes.eval.common.utils import quaternion_yaw
from pyquaternion import Quaternion

from datasets.files import read_json
from datasets.nuscenes.constants import CAN_BUS_DIM

#: Scenes the devkit's ``NuScenesCanBus`` refuses (no CAN data recorded).
CAN_BUS_BLACKLIST = frozenset((*range(161, 169), *range(170, 177), *range(309, 315)))


class CanBusReader:
    """Reads ``<can_bus_root>/can_bus/<scene>_pose.json`` (``NuScenesCanBus(dataroot=can_bus_root)`` layout).

    With ``can_bus_root`` None, or for a scene without a pose file, the message part of the vector is 0.
    """

    def __init__(self, can_bus_root: str | Path | None) -> None:
        self.directory = None if can_bus_root is None else Path(can_bus_root) / "can_bus"
        if self.directory is not None and not self.directory.is_dir():
            raise FileNotFoundError(f"CAN bus directory not found: {self.directory}")
        self._poses: dict[str, tuple[np.ndarray, list[dict]] | None] = {}

    def _scene_poses(self, scene_name: str) -> tuple[np.ndarray, list[dict]] | None:
        """(utimes (M,), messages) of a scene's pose file, or None if there is none to read."""
        if scene_name not in self._poses:
            self._poses[scene_name] = None
            readable = (
                re.fullmatch(r"scene-\d{4}", scene_name) and int(scene_name[-4:]) not in CAN_BUS_BLACKLIST
            )
            path = None if self.directory is None else self.directory / f"{scene_name}_pose.json"
            if readable and path is not None and path.is_file():
                messages = sorted(read_json(path, "CAN bus pose"), key=lambda message: message["utime"])
                if messages:
                    utimes = np.array([message["utime"] for message in messages])
                    self._poses[scene_name] = (utimes, messages)
        return self._poses[scene_name]

    def vector(
        self, scene_name: str, timestamp: int, ego_translation: list[float], ego_rotation: list[float]
    ) -> tuple[np.ndarray, bool]:
        """CAN bus vector (18,) at ``timestamp`` (us) for the ego pose (translation (3,), rotation wxyz (4,))
        and whether its message part came from a pose file."""
        yaw_degrees = np.rad2deg(quaternion_yaw(Quaternion(ego_rotation))) % 360.0
        vector = np.zeros(CAN_BUS_DIM)
        vector[:3] = ego_translation
        vector[3:7] = ego_rotation
        vector[16], vector[17] = np.deg2rad(yaw_degrees), yaw_degrees
        poses = self._scene_poses(scene_name)
        if poses is None:
            return vector, False
        utimes, messages = poses
        pose = messages[max(int(np.searchsorted(utimes, timestamp, side="right")) - 1, 0)]
        vector[7:10], vector[10:13], vector[13:16] = pose["accel"], pose["rotation_rate"], pose["vel"]
        return vector, True
