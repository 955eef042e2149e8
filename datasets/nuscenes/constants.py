"""Fixed facts of the nuScenes detection task shared by the loader, generator and evaluation."""

from __future__ import annotations

#: The 10 detection classes, in the label order used by every model of this project.
CLASS_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)

#: ``pc_range``: [x_min, y_min, z_min, x_max, y_max, z_max] in metres, lidar frame; the published models'
#: detection range (``bev.BEVModelConfig.pc_range``) and the dataset's ground-truth filter by default.
PC_RANGE: tuple[float, float, float, float, float, float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)

#: The six cameras in the order used for the camera axis of every tensor.
CAMERA_NAMES: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)

LIDAR_NAME = "LIDAR_TOP"

#: Attribute written for a predicted box when nothing better is known (the devkit's 8 names or '').
DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}

#: Speed (m/s) above which a predicted box is given its class's "moving" attribute.
MOVING_SPEED_THRESHOLD = 0.2

#: Length of the CAN bus vector: pos(3), orientation wxyz(4), accel(3), rotation_rate(3), vel(3),
#: yaw in rad and in degrees, both in [0, 360) degrees (BEVFormer's layout).
CAN_BUS_DIM = 18
