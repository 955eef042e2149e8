"""Image augmentation of BEVFormer's training pipeline, per camera image, on float32 pixel values 0-255.

* :class:`PhotoMetricDistortion`: mmdet's ``PhotoMetricDistortionMultiViewImage`` (brightness, contrast
  before or after the HSV part, saturation, hue, channel swap; each step with probability 1/2, drawn
  independently for every camera image of every frame). No clipping, as in the original: values may
  leave [0, 255] and the network sees them normalized.
* :func:`resize_camera`: ``RandomScaleImageMultiViewImage`` (bilinear resize of the image, lidar2img
  scaled so that a projected point lands on the same content). BEVFormer-tiny/-small scale the
  1600 x 900 nuScenes images by 0.5 / 0.8: ``data.image_size`` 800 x 450 / 1280 x 720.

PETR / PETRv2's pipeline (``projects/mmdet3d_plugin/datasets/pipelines/transform_3d.py``):

* :class:`ResizeCropFlip`: ``ResizeCropFlipImage``, one draw per sample applied to every image (all 12 of
  PETRv2): resize by a random factor, crop ``final_size`` (random columns, rows from the bottom), random
  horizontal flip; without ``resize_range`` the test-time transform (factor ``max(H'/H, W'/W)``, bottom
  rows, central columns, no flip). lidar2img is left-multiplied by :meth:`ImageCrop.matrix`.
* :class:`GlobalRotScale`: ``GlobalRotScaleTransImage``: the scene is rotated about the lidar z axis and
  scaled; boxes move with it and every lidar2img is right-multiplied by the inverse
  (:func:`rotate_scale_scene`), so that every box projects onto the same pixels.

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


@dataclass(frozen=True)
class ImageCrop:
    """One draw of :class:`ResizeCropFlip` for a source image of ``source_size`` (width, height): resize
    to ``resized`` (width, height), keep the ``final_size`` window whose top-left corner is ``corner``
    (x, y) in the resized image (zeros outside it), then mirror left-right with ``flip``."""

    source_size: tuple[int, int]
    resized: tuple[int, int]
    corner: tuple[int, int]
    final_size: tuple[int, int]
    flip: bool

    def matrix(self) -> np.ndarray:
        """(4, 4) float64 map of source pixel coordinates to output ones (pixel j spans [j, j + 1)):
        ``u' = u * W_r / W - x0`` (``final_width - u'`` with ``flip``), ``v' = v * H_r / H - y0``. The
        original scales by the drawn factor, not the rounded sizes' ratio (< 1 pixel apart; equal for the
        published test-time sizes)."""
        (width, height), (resized_w, resized_h) = self.source_size, self.resized
        matrix = np.eye(4)
        matrix[0, 0], matrix[1, 1] = resized_w / width, resized_h / height
        matrix[:2, 2] = -np.asarray(self.corner, dtype=np.float64)
        if self.flip:
            matrix[0] = -matrix[0]
            matrix[0, 2] += self.final_size[0]
        return matrix

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The transformed copy (final_height, final_width, 3) of ``image`` (H, W, 3) of ``source_size``
        (bilinear resize)."""
        if image.shape[1::-1] != self.source_size:
            raise ValueError(
                f"ResizeCropFlip was drawn for {self.source_size[0]}x{self.source_size[1]} images, got "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        resized = cv2.resize(image, self.resized, interpolation=cv2.INTER_LINEAR)
        (x0, y0), (width, height) = self.corner, self.final_size
        out = np.zeros((height, width, *image.shape[2:]), dtype=image.dtype)
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + height, resized.shape[0]), min(x0 + width, resized.shape[1])
        if bottom > top and right > left:
            out[top - y0 : bottom - y0, left - x0 : right - x0] = resized[top:bottom, left:right]
        return np.ascontiguousarray(out[:, ::-1]) if self.flip else out


@dataclass(frozen=True)
class ResizeCropFlip:
    """PETR's ``ResizeCropFlipImage`` (``ida_aug_conf``; image rotation ``rot_lim`` is 0 in every
    published config and not supported).

    Args:
        final_size: (width, height) of the output (``final_dim`` is (height, width)).
        resize_range: random resize factor range in training (``resize_lim``); None: the test-time
            transform.
        bot_pct_range: fraction of the resized height cut off at the bottom (``bot_pct_lim``; its mean at
            test time).
        flip: random horizontal flip with probability 1/2 in training (``rand_flip``).
    """

    final_size: Sequence[int]
    resize_range: Sequence[float] | None = None
    bot_pct_range: Sequence[float] = (0.0, 0.0)
    flip: bool = False

    def __post_init__(self) -> None:  # config lists become tuples
        width, height = (int(v) for v in self.final_size)
        if width < 1 or height < 1:
            raise ValueError(f"final_size must be (width, height) >= 1, got {tuple(self.final_size)}")
        object.__setattr__(self, "final_size", (width, height))
        for name in ("resize_range", "bot_pct_range"):
            value = getattr(self, name)
            if value is None:
                continue
            low, high = (float(v) for v in value)
            if not 0 <= low <= high or (name == "resize_range" and low == 0):
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {tuple(value)}")
            object.__setattr__(self, name, (low, high))

    def draw(self, source_size: tuple[int, int], rng: np.random.Generator) -> ImageCrop:
        """The transform of one sample's images of ``source_size`` (width, height); draws (training) a
        uniform factor, a uniform bottom fraction, a uniform left column, then a flip coin."""
        (width, height), (final_w, final_h) = source_size, self.final_size
        if self.resize_range is not None:
            factor = rng.uniform(*self.resize_range)
        else:
            factor = max(final_h / height, final_w / width)
        resized_w, resized_h = int(width * factor), int(height * factor)
        if self.resize_range is not None:
            top = int((1 - rng.uniform(*self.bot_pct_range)) * resized_h) - final_h
            left = int(rng.uniform(0, max(0, resized_w - final_w)))
            flip = self.flip and bool(rng.integers(2))
        else:
            top = int((1 - np.mean(self.bot_pct_range)) * resized_h) - final_h
            left = int(max(0, resized_w - final_w) / 2)
            flip = False
        return ImageCrop(tuple(source_size), (resized_w, resized_h), (left, top), (final_w, final_h), flip)


@dataclass(frozen=True)
class GlobalRotScale:
    """PETR's ``GlobalRotScaleTransImage`` (no translation, as published): a rotation about the lidar z
    axis uniform in ``rot_range`` (rad), then a scale uniform in ``scale_range``."""

    rot_range: Sequence[float] = (-0.3925, 0.3925)
    scale_range: Sequence[float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        rot_low, rot_high = (float(v) for v in self.rot_range)
        scale_low, scale_high = (float(v) for v in self.scale_range)
        if rot_low > rot_high or not 0 < scale_low <= scale_high:
            raise ValueError(
                f"rot_range must be (low, high) and scale_range (low, high) with 0 < low <= high, got "
                f"{tuple(self.rot_range)}, {tuple(self.scale_range)}"
            )
        object.__setattr__(self, "rot_range", (rot_low, rot_high))
        object.__setattr__(self, "scale_range", (scale_low, scale_high))

    def draw(self, rng: np.random.Generator) -> tuple[float, float]:
        """(angle in rad, scale), drawn in that order."""
        return float(rng.uniform(*self.rot_range)), float(rng.uniform(*self.scale_range))


def rotate_scale_scene(
    boxes: np.ndarray, lidar2img: np.ndarray, angle: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate the scene by ``angle`` about the lidar z axis, then scale it by ``scale``.

    Args:
        boxes: (K, 9) [x, y, z, w, l, h, yaw, vx, vy] lidar frame: centres and velocities rotated and
            scaled, sizes scaled, ``angle`` added to yaw.
        lidar2img: (..., 4, 4) right-multiplied by the inverse scene transform, so that every moved point
            projects onto the pixel it projected onto before.

    Returns:
        The moved boxes and the updated lidar2img (float64).
    """
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    transform = np.diag([scale, scale, scale, 1.0])
    transform[:2, :2] = scale * rotation
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 9)
    boxes[:, :3] = boxes[:, :3] @ transform[:3, :3].T
    boxes[:, 3:6] *= scale
    boxes[:, 6] += angle
    boxes[:, 7:9] = scale * boxes[:, 7:9] @ rotation.T
    return boxes, np.asarray(lidar2img, dtype=np.float64) @ np.linalg.inv(transform)
