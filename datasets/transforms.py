"""Detection transforms on numpy arrays: flip, multi-scale resize, random crop, normalization.

Every transform is a callable ``(image, target, rng) -> (image, target)`` where

- ``image`` is an (H, W, 3) uint8 RGB array,
- ``target`` is a dict with ``boxes`` (K, 4) float32 absolute (x1, y1, x2, y2) pixels, ``labels`` (K,)
  int64, and any extra keys (``image_id``, ``orig_size``, ...), which are passed through,
- ``rng`` is the ``numpy.random.Generator`` that drives every random choice, so an augmentation is a
  pure function of its seed (exact resume, identical results with any number of workers).

:class:`ToTensor` ends a pipeline: it turns the image into a normalized (3, H, W) float tensor and the
boxes into normalized (cx, cy, w, h), the format the model and the criterion use.

Fidelity to the original Deformable DETR (which transforms PIL images with torchvision): the output
size rule is its ``get_size_with_aspect_ratio``; ``interpolation="pil"`` resizes with Pillow's bilinear
filter (antialiased when shrinking), exactly what torchvision's ``F.resize`` does to a PIL image, and
:class:`ToTensor` computes ``to_tensor`` + ``normalize`` with the same float32 operations. The eval
pipeline of :func:`build_transforms` is therefore bit-identical to the original's for the same decoded
RGB pixels. The training pipeline resizes with OpenCV by default (``train_interpolation="cv2"``:
INTER_AREA when shrinking, INTER_LINEAR when enlarging, about 10x faster than Pillow); its random
draws come from a numpy generator, so its samples are not the original's anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

Target = dict[str, Any]
Transform = Callable[[np.ndarray, Target, np.random.Generator], tuple[np.ndarray, Target]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("pil", "cv2")


def hflip(image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
    """Mirror the image left-right; boxes (K, 4) xyxy follow: x1' = W - x2, x2' = W - x1."""
    width = image.shape[1]
    boxes = target["boxes"]
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    return np.ascontiguousarray(image[:, ::-1]), {**target, "boxes": flipped.astype(np.float32)}


def resized_shape(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (h, w) with the short side ``size``, shrunk so that the long side stays ≤ ``max_size``.

    Follows the reference implementation: the short side becomes ``size`` (or the smaller value that
    keeps the long side within ``max_size``) and the long side is scaled and truncated to an integer.
    """
    short, long = min(height, width), max(height, width)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_pixels(image: np.ndarray, height: int, width: int, interpolation: str = "pil") -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (height, width, C).

    Args:
        image: (H, W, C) uint8.
        height, width: output size.
        interpolation: ``"pil"``: Pillow's bilinear filter (the original's; its support widens with
            the shrink factor, i.e. antialiased); ``"cv2"``: OpenCV INTER_AREA when shrinking, else
            INTER_LINEAR (faster; pixels differ from the original's by several grey levels).
    """
    if interpolation == "pil":
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
    if interpolation == "cv2":
        shrink = height * width < image.shape[0] * image.shape[1]
        return cv2.resize(
            image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def resize(
    image: np.ndarray, target: Target, size: int, max_size: int | None = None, interpolation: str = "pil"
) -> tuple[np.ndarray, Target]:
    """Resize so the short side is ``size`` (long side ≤ ``max_size``); boxes scale with the image.

    ``interpolation``: see :func:`resize_pixels`.
    """
    height, width = image.shape[:2]
    out_h, out_w = resized_shape(height, width, size, max_size)
    if (out_h, out_w) == (height, width):
        return image, target
    image = resize_pixels(image, out_h, out_w, interpolation)
    scale = np.array([out_w / width, out_h / height, out_w / width, out_h / height], dtype=np.float32)
    return image, {**target, "boxes": (target["boxes"] * scale).astype(np.float32)}


def crop(
    image: np.ndarray, target: Target, top: int, left: int, height: int, width: int
) -> tuple[np.ndarray, Target]:
    """Cut the region [top, top + height) × [left, left + width).

    Boxes are shifted into the region and clipped to it; boxes left with zero width or height are
    removed together with their labels.
    """
    image = image[top : top + height, left : left + width]
    boxes = target["boxes"] - np.array([left, top, left, top], dtype=np.float32)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return np.ascontiguousarray(image), {**target, "boxes": boxes[keep], "labels": target["labels"][keep]}


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> tuple[Any, Target]:
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target


class RandomHorizontalFlip:
    """Flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: np.ndarray, target: Target, rng: np.random.Generator
    ) -> tuple[np.ndarray, Target]:
        return hflip(image, target) if rng.random() < self.p else (image, target)


class RandomResize:
    """Resize the short side to a size drawn uniformly from ``sizes`` (long side ≤ ``max_size``).

    ``interpolation``: ``"pil"`` (the original's) or ``"cv2"``, see :func:`resize_pixels`.
    """

    def __init__(self, sizes: Sequence[int], max_size: int | None = None, interpolation: str = "pil") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.sizes = list(sizes)
        self.max_size = max_size
        self.interpolation = interpolation

    def __call__(
        self, image: np.ndarray, target: Target, rng: np.random.Generator
    ) -> tuple[np.ndarray, Target]:
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        return resize(image, target, size, self.max_size, self.interpolation)


class RandomSizeCrop:
    """Crop a random region whose height and width are drawn from [min_size, max_size].

    Both bounds are capped by the image size, so a small image is cropped to at most itself.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size = min_size
        self.max_size = max_size

    def __call__(
        self, image: np.ndarray, target: Target, rng: np.random.Generator
    ) -> tuple[np.ndarray, Target]:
        img_h, img_w = image.shape[:2]
        width = int(rng.integers(min(self.min_size, img_w), min(self.max_size, img_w) + 1))
        height = int(rng.integers(min(self.min_size, img_h), min(self.max_size, img_h) + 1))
        top = int(rng.integers(img_h - height + 1))
        left = int(rng.integers(img_w - width + 1))
        return crop(image, target, top, left, height, width)


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first = first
        self.second = second
        self.p = p

    def __call__(
        self, image: np.ndarray, target: Target, rng: np.random.Generator
    ) -> tuple[np.ndarray, Target]:
        return (self.first if rng.random() < self.p else self.second)(image, target, rng)


class ToTensor:
    """Normalize the image and convert the target to tensors.

    Output image: (3, H, W) float32, ``(rgb / 255 - mean) / std`` in float32 (bit-identical to
    torchvision's ``normalize(to_tensor(pil_image), mean, std)``). Output target: ``boxes`` (K, 4)
    float32 normalized (cx, cy, w, h) in [0, 1], ``labels`` (K,) int64, ``size`` (2,) int64 (h, w) of
    the transformed image; other keys are converted with ``torch.as_tensor``.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(
        self, image: np.ndarray, target: Target, rng: np.random.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        height, width = image.shape[:2]
        pixels = (image.astype(np.float32) / np.float32(255.0) - self.mean) / self.std
        boxes = target["boxes"].reshape(-1, 4)
        cxcywh = np.stack(
            [
                (boxes[:, 0] + boxes[:, 2]) / (2 * width),
                (boxes[:, 1] + boxes[:, 3]) / (2 * height),
                (boxes[:, 2] - boxes[:, 0]) / width,
                (boxes[:, 3] - boxes[:, 1]) / height,
            ],
            axis=1,
        )
        out = {key: torch.as_tensor(value) for key, value in target.items()}
        out["boxes"] = torch.from_numpy(cxcywh.astype(np.float32))
        out["labels"] = torch.as_tensor(target["labels"], dtype=torch.int64)
        out["size"] = torch.tensor([height, width], dtype=torch.int64)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), out


def build_transforms(
    train: bool,
    scales: Sequence[int] = tuple(range(480, 801, 32)),
    max_size: int = 1333,
    crop_resize_sizes: Sequence[int] | None = (400, 500, 600),
    crop_size: tuple[int, int] = (384, 600),
    flip_prob: float = 0.5,
    eval_size: int = 800,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    train_interpolation: str = "cv2",
) -> Compose:
    """The Deformable DETR pipelines; defaults are the published COCO values.

    Train: flip, then either a multi-scale resize (short side from ``scales``, long ≤ ``max_size``) or,
    with probability 1/2, resize to ``crop_resize_sizes`` → random crop of ``crop_size`` (min, max) →
    the multi-scale resize; ``crop_resize_sizes=None`` disables the crop branch. Its resizes use
    ``train_interpolation`` (``"cv2"``, fast, or ``"pil"``, the original's; see :func:`resize_pixels`).
    Eval: short side ``eval_size``, long ≤ ``max_size``, Pillow bilinear: the original's test-time
    preprocessing exactly. Both end with :class:`ToTensor`.
    """
    if not train:
        return Compose([RandomResize([eval_size], max_size, "pil"), ToTensor(mean, std)])
    multi_scale: Transform = RandomResize(scales, max_size, train_interpolation)
    if crop_resize_sizes is not None:
        multi_scale = RandomSelect(
            multi_scale,
            Compose(
                [
                    RandomResize(crop_resize_sizes, interpolation=train_interpolation),
                    RandomSizeCrop(*crop_size),
                    RandomResize(scales, max_size, train_interpolation),
                ]
            ),
        )
    return Compose([RandomHorizontalFlip(flip_prob), multi_scale, ToTensor(mean, std)])
