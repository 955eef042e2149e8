"""Image augmentation of BEVFormer's training pipeline, per camera image, on float32 pixel values 0-255.

* :class:`PhotoMetricDistortion`: mmdet's ``PhotoMetricDistortionMultiViewImage`` (brightness, contrast
  before or after the HSV part, saturation, hue, channel swap; each step with probability 1/2, drawn
  independently for every camera image of every frame). No clipping, as in the original: values may
  leave [0, 255] and the network sees them normalized.
* :func:`resize_camera`: ``RandomScaleImageMultiViewImage`` (bilinear resize of the image, lidar2img
  scaled so that a projected point lands on the same content). BEVFormer-tiny/-small scale the
  1600 x 900 nuScenes images by 0.5 / 0.8: ``data.image_size`` 800 x 450 / 1280 x 720.

The original works on BGR images; ours are RGB. The HSV conversion is the same (OpenCV's float
conversion, hue in degrees, of the same colour), and the channel swap draws a uniform permutation of
the channels in either order, so the distribution of the output is the original's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """``image + delta`` (H, W, 3) float32."""
    return image + np.float32(delta)


def adjust_contrast(image: np.ndarray, alpha: float) -> np.ndarray:
    """``image * alpha`` (H, W, 3) float32 (mmdet's contrast: a plain gain)."""
    return image * np.float32(alpha)


def adjust_saturation(hsv: np.ndarray, factor: float) -> np.ndarray:
    """Saturation channel of an HSV image (H, W, 3) float32 times ``factor``."""
    out = hsv.copy()
    out[..., 1] *= np.float32(factor)
    return out


def shift_hue(hsv: np.ndarray, delta: float) -> np.ndarray:
    """Hue (degrees) of an HSV image plus ``delta``, wrapped as mmdet does: above 360 minus 360, below 0
    plus 360."""
    out = hsv.copy()
    hue = out[..., 0] + np.float32(delta)
    hue[hue > 360] -= 360
    hue[hue < 0] += 360
    out[..., 0] = hue
    return out


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """OpenCV's float32 RGB -> HSV (hue in degrees [0, 360), saturation [0, 1], value = max channel)."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2HSV)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_hsv`."""
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@dataclass(frozen=True)
class PhotoMetricDistortion:
    """mmdet's ``PhotoMetricDistortionMultiViewImage`` for one camera image, drawing from ``rng``.

    Order of the draws and steps (each "maybe" is ``rng.integers(2)``, 1 = apply): maybe brightness
    ``+U(-brightness_delta, brightness_delta)``; ``mode = rng.integers(2)``; mode 1: maybe contrast
    ``*U(contrast_range)``; to HSV; maybe saturation ``*U(saturation_range)``; maybe hue
    ``+U(-hue_delta, hue_delta)``; to RGB; mode 0: maybe contrast; maybe channel permutation.
    """

    brightness_delta: float = 32.0
    contrast_range: Sequence[float] = (0.5, 1.5)
    saturation_range: Sequence[float] = (0.5, 1.5)
    hue_delta: float = 18.0

    def __post_init__(self) -> None:
        for name in ("contrast_range", "saturation_range"):  # config lists become (low, high) floats
            low, high = (float(v) for v in getattr(self, name))
            object.__setattr__(self, name, (low, high))
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got ({low}, {high})")
        if self.brightness_delta < 0 or self.hue_delta < 0:
            raise ValueError(
                f"brightness_delta and hue_delta must be >= 0, got {self.brightness_delta}, {self.hue_delta}"
            )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Distorted copy of ``image`` (H, W, 3) float32 RGB 0-255 (any other dtype raises)."""
        if image.dtype != np.float32 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"photometric distortion needs an (H, W, 3) float32 image, got {image.dtype} {image.shape}"
            )
        if rng.integers(2):
            image = adjust_brightness(image, rng.uniform(-self.brightness_delta, self.brightness_delta))
        contrast_last = rng.integers(2) == 0
        if not contrast_last and rng.integers(2):
            image = adjust_contrast(image, rng.uniform(*self.contrast_range))
        hsv = rgb_to_hsv(image)
        if rng.integers(2):
            hsv = adjust_saturation(hsv, rng.uniform(*self.saturation_range))
        if rng.integers(2):
            hsv = shift_hue(hsv, rng.uniform(-self.hue_delta, self.hue_delta))
        image = hsv_to_rgb(hsv)
        if contrast_last and rng.integers(2):
            image = adjust_contrast(image, rng.uniform(*self.contrast_range))
        if rng.integers(2):
            image = np.ascontiguousarray(image[..., rng.permutation(3)])
        return image


def resize_camera(
    image: np.ndarray, lidar2img: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of one camera image to ``size`` (width, height) and its lidar2img (4, 4) scaled to
    match: ``diag(width / W, height / H, 1, 1) @ lidar2img`` (``RandomScaleImageMultiViewImage`` with
    scale s when ``size`` is s x the stored size).

    Args:
        image: (H, W, 3) float32 or uint8.
        lidar2img: (4, 4) lidar frame -> pixels of ``image``.
        size: (width, height) of the output.

    Returns:
        The resized image (height, width, 3) of ``image``'s dtype and the scaled lidar2img (float64).
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be (width, height) >= 1, got {tuple(size)}")
    scale = np.diag([width / image.shape[1], height / image.shape[0], 1.0, 1.0])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized, scale @ np.asarray(lidar2img, dtype=np.float64)
