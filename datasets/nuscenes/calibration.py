"""Calibration of the real nuScenes car n015 (copied from v1.0-mini), used by the synthetic generator.

Rotations are quaternions (w, x, y, z) mapping sensor -> ego; translations are in metres in the ego
frame; camera intrinsics are for the original 1600 x 900 images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Image size (width, height) for which :data:`N015_CALIBRATION` intrinsics hold.
N015_IMAGE_SIZE: tuple[int, int] = (1600, 900)


@dataclass(frozen=True)
class SensorCalibration:
    """One sensor's mounting: sensor->ego translation (3,), rotation wxyz (4,), optional (fx, cx, cy)."""

    translation: tuple[float, float, float]
    rotation: tuple[float, float, float, float]
    focal_center: tuple[float, float, float] | None = None

    def intrinsic(self, image_size: tuple[int, int]) -> np.ndarray:
        """Camera matrix (3, 3) for images of ``image_size`` = (width, height), scaled from 1600 x 900."""
        if self.focal_center is None:
            raise ValueError("intrinsic() asked of a sensor that is not a camera")
        focal, cx, cy = self.focal_center
        sx = image_size[0] / N015_IMAGE_SIZE[0]
        sy = image_size[1] / N015_IMAGE_SIZE[1]
        return np.array([[focal * sx, 0.0, cx * sx], [0.0, focal * sy, cy * sy], [0.0, 0.0, 1.0]])


N015_CALIBRATION: dict[str, SensorCalibration] = {
    "CAM_FRONT": SensorCalibration(
        (1.70079118954, 0.0159456324149, 1.51095763913),
        (0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755),
        (1266.417203046554, 816.2670197447984, 491.50706579294757),
    ),
    "CAM_FRONT_RIGHT": SensorCalibration(
        (1.5508477543, -0.493404796419, 1.49574800619),
        (0.2060347966337182, -0.2026940577919598, 0.6824507824531167, -0.6713610884174485),
        (1260.8474446004698, 807.968244525554, 495.3344268742088),
    ),
    "CAM_FRONT_LEFT": SensorCalibration(
        (1.52387798135, 0.494631336551, 1.50932822144),
        (0.6757265034669446, -0.6736266522251881, 0.21214015046209478, -0.21122827103904068),
        (1272.5979470598488, 826.6154927353808, 479.75165386361925),
    ),
    "CAM_BACK": SensorCalibration(
        (0.0283260309358, 0.00345136761476, 1.57910346144),
        (0.5037872666382278, -0.49740249788611096, -0.4941850223835201, 0.5045496097725578),
        (809.2209905677063, 829.2196003259838, 481.77842384512485),
    ),
    "CAM_BACK_LEFT": SensorCalibration(
        (1.03569100218, 0.484795032713, 1.59097014818),
        (0.6924185592174665, -0.7031619420114925, -0.11648342771943819, 0.11203317912370753),
        (1256.7414812095406, 792.1125740759628, 492.7757465151356),
    ),
    "CAM_BACK_RIGHT": SensorCalibration(
        (1.0148780988, -0.480568219723, 1.56239545128),
        (0.12280980120078765, -0.132400842670559, -0.7004305821388234, 0.690496031265798),
        (1259.5137405846733, 807.2529053838625, 501.19579884916527),
    ),
    "LIDAR_TOP": SensorCalibration(
        (0.943713, 0.0, 1.84023),
        (0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817),
    ),
}
