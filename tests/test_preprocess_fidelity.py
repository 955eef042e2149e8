"""The eval pipeline reproduces the original Deformable DETR's test-time preprocessing.

The reference below is the original's pipeline written out: ``get_size_with_aspect_ratio`` (its
datasets/transforms.py ``resize``), torchvision's ``F.resize`` of a PIL image (``PIL.Image.resize`` with
BILINEAR to (w, h)), ``to_tensor`` (uint8 -> float32 / 255) and ``normalize`` (``sub_(mean).div_(std)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, resize_pixels, resized_shape


def original_size(image_size: tuple[int, int], size: int, max_size: int | None) -> tuple[int, int]:
    """The original's ``get_size_with_aspect_ratio``: PIL (w, h) in, (oh, ow) out."""
    w, h = image_size
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def original_eval(image: np.ndarray, size: int = 800, max_size: int = 1333) -> torch.Tensor:
    """The original's eval preprocessing of an (H, W, 3) uint8 RGB image -> (3, h, w) float32."""
    pil = Image.fromarray(image)
    oh, ow = original_size(pil.size, size, max_size)
    pil = pil.resize((ow, oh), Image.Resampling.BILINEAR)
    tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return tensor.sub_(mean).div_(std)


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour gradients, sensor-like noise, hard-edged shapes and a fine stripe texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            120 + 90 * np.sin(x / width * 3.1 + 0.5),
            40 + 160 * y / height,
            200 - 120 * (x + y) / (height + width),
        ],
        axis=-1,
    )
    image += rng.normal(0, 8, image.shape)
    for _ in range(6):
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        image[y0 : y0 + rng.integers(3, height // 3 + 4), x0 : x0 + rng.integers(3, width // 3 + 4)] = (
            rng.integers(0, 256, 3)
        )
    image[:, ::3] += 25 * (x[:, ::3] < width / 4)[..., None]  # 1-pixel stripes: aliasing-prone
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


SIZES = [
    (480, 640),  # enlarged to 800 x 1066
    (427, 640),
    (640, 427),  # portrait
    (333, 501),  # odd sizes
    (1201, 1799),  # shrunk: antialiasing matters
    (2001, 997),  # portrait, long side capped at 1333
    (300, 1000),  # long side capped: short side 400
    (800, 1199),  # already the size
]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_eval_pipeline_equals_original(height: int, width: int) -> None:
    image = photo_like(height, width, seed=height * 7 + width)
    expected = original_eval(image)
    tensor, target = build_transforms(False)(
        image,
        {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)},
        np.random.default_rng(),
    )
    assert tuple(tensor.shape) == tuple(expected.shape)
    assert target["size"].tolist() == list(expected.shape[1:])
    torch.testing.assert_close(tensor, expected, rtol=0, atol=0)


def test_opencv_shrink_is_not_the_original() -> None:
    """Why the eval pipeline uses Pillow: when shrinking, OpenCV's INTER_AREA differs by grey levels.

    (When enlarging, Pillow's bilinear is plain bilinear and OpenCV's INTER_LINEAR is within 1 level.)
    """
    image = photo_like(1201, 1799, seed=3)
    pil = resize_pixels(image, 800, 1198, "pil")
    reference = np.asarray(Image.fromarray(image).resize((1198, 800), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(pil, reference)
    assert np.abs(resize_pixels(image, 800, 1198, "cv2").astype(int) - pil.astype(int)).max() > 1


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 5000),
    st.integers(1, 5000),
    st.integers(16, 1000),
    st.one_of(st.none(), st.integers(16, 2000)),
)
def test_size_rule_equals_original(height: int, width: int, size: int, max_size: int | None) -> None:
    assert resized_shape(height, width, size, max_size) == original_size((width, height), size, max_size)


def test_unknown_interpolation_is_rejected() -> None:
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resize_pixels(np.zeros((4, 4, 3), np.uint8), 2, 2, "bicubic")
