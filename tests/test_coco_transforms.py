"""Detection transforms keep images and boxes consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomResize,
    ToTensor,
    build_transforms,
    crop,
    hflip,
    resize,
    resize_pixels,
    resized_shape,
)


def _target(boxes: list[list[float]]) -> dict:
    boxes_np = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return {"boxes": boxes_np, "labels": np.arange(1, len(boxes_np) + 1, dtype=np.int64), "image_id": 7}


def _painted(height: int, width: int, boxes: np.ndarray) -> np.ndarray:
    """Black image with each box filled white (integer pixel boxes)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    return image


def _extent(image: np.ndarray) -> np.ndarray:
    """Bounding box (x1, y1, x2, y2) of the bright pixels."""
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(8, 64),
    st.integers(8, 64),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), max_size=5),
)
def test_flip_twice_is_identity(height: int, width: int, raw: list[tuple[float, ...]]) -> None:
    boxes = [
        [min(a, c) * width, min(b, d) * height, max(a, c) * width, max(b, d) * height] for a, b, c, d in raw
    ]
    image = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    target = _target(boxes)
    image2, target2 = hflip(*hflip(image, target))
    np.testing.assert_array_equal(image2, image)
    np.testing.assert_allclose(target2["boxes"], target["boxes"], atol=1e-4)
    assert target2["image_id"] == 7


def test_flip_moves_boxes_with_pixels() -> None:
    boxes = np.array([[2, 3, 10, 9], [20, 0, 32, 16]], dtype=np.float32)
    image, target = hflip(_painted(16, 32, boxes[:1]), _target(boxes[:1].tolist()))
    np.testing.assert_array_equal(_extent(image), target["boxes"][0])


@pytest.mark.parametrize(
    ("hw", "size", "max_size", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1066)),
        ((640, 480), 800, 1333, (1066, 800)),
        ((427, 640), 800, 1333, (800, 1199)),
        ((300, 1000), 800, 1333, (400, 1333)),  # long side capped: short side shrinks to 400
        ((800, 600), 600, None, (800, 600)),  # already the size
    ],
)
def test_resized_shape(
    hw: tuple[int, int], size: int, max_size: int | None, expected: tuple[int, int]
) -> None:
    assert resized_shape(*hw, size, max_size) == expected


def test_resize_scales_boxes_with_pixels() -> None:
    boxes = np.array([[8, 4, 40, 20]], dtype=np.float32)
    image, target = resize(_painted(32, 64, boxes), _target(boxes.tolist()), 64, None)
    assert image.shape[:2] == (64, 128)
    np.testing.assert_allclose(target["boxes"], [[16, 8, 80, 40]])
    np.testing.assert_allclose(_extent(image), target["boxes"][0], atol=1)


def test_crop_clips_and_drops_boxes() -> None:
    boxes = [[0, 0, 10, 10], [15, 15, 30, 30], [40, 40, 50, 50]]
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    out, target = crop(image, _target(boxes), top=5, left=5, height=20, width=20)
    assert out.shape == (20, 20, 3)
    np.testing.assert_allclose(target["boxes"], [[0, 0, 5, 5], [10, 10, 20, 20]])
    np.testing.assert_array_equal(target["labels"], [1, 2])  # the box outside the crop is gone


def test_to_tensor_normalizes_image_and_boxes() -> None:
    image = np.full((10, 20, 3), 255, dtype=np.uint8)
    tensor, target = ToTensor()(image, _target([[0, 0, 20, 10], [5, 2, 9, 6]]), np.random.default_rng(0))
    assert tensor.shape == (3, 10, 20) and tensor.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(tensor[:, 0, 0], expected)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.35, 0.4, 0.2, 0.4]]))
    assert target["labels"].dtype == torch.int64
    assert target["size"].tolist() == [10, 20]


@pytest.mark.parametrize("seed", range(20))
def test_train_pipeline_keeps_boxes_on_objects(seed: int) -> None:
    """Whatever flip/resize/crop the pipeline draws, each surviving box still frames its object."""
    rng = np.random.default_rng(seed)
    boxes = np.array([[10, 12, 50, 40], [70, 60, 110, 90]], dtype=np.float32)
    image = _painted(100, 120, boxes[:1])
    image[60:90, 70:110, 1] = 255  # second object in another channel
    transform = build_transforms(
        True, scales=[64, 80, 96], max_size=160, crop_resize_sizes=[70, 90], crop_size=(48, 80)
    )
    tensor, target = transform(image, _target(boxes.tolist()), rng)
    height, width = tensor.shape[1:]
    assert min(height, width) in (64, 80, 96) or max(height, width) <= 160
    pixels = (tensor.permute(1, 2, 0) * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)).numpy()
    for box, label in zip(target["boxes"], target["labels"], strict=True):
        cx, cy, w, h = box.tolist()
        expected = np.array(
            [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        )
        channel = pixels[..., 0] if label == 1 else pixels[..., 1] * (pixels[..., 0] < 0.5)
        ys, xs = np.nonzero(channel > 0.5)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], expected, atol=1.5)


def test_eval_pipeline_is_deterministic_resize() -> None:
    transform = build_transforms(False, eval_size=64, max_size=100)
    tensor, target = transform(
        np.zeros((50, 80, 3), dtype=np.uint8), _target([[0, 0, 8, 5]]), np.random.default_rng()
    )
    assert tensor.shape == (
        3,
        62,
        99,
    )  # 64 × 1.6 would exceed 100: short side round(62.5) = 62, long int(99.2)
    np.testing.assert_allclose(target["boxes"][0].numpy(), [4 / 80, 2.5 / 50, 8 / 80, 5 / 50], rtol=1e-5)


@pytest.mark.parametrize("interpolation", ["pil", "cv2"])
def test_train_interpolation_choice(interpolation: str) -> None:
    """``train_interpolation`` picks the training resize filter; the eval pipeline always uses Pillow's."""
    image = np.random.default_rng(0).integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
    transform = build_transforms(
        True,
        scales=[48],
        max_size=None,
        crop_resize_sizes=None,
        flip_prob=0.0,
        train_interpolation=interpolation,
    )
    tensor, _ = transform(image, _target([[0, 0, 10, 10]]), np.random.default_rng(0))
    expected, _ = ToTensor()(
        resize_pixels(image, 48, 64, interpolation), _target([]), np.random.default_rng(0)
    )
    torch.testing.assert_close(tensor, expected, rtol=0, atol=0)
    other = resize_pixels(image, 48, 64, "cv2" if interpolation == "pil" else "pil")
    assert not np.array_equal(other, resize_pixels(image, 48, 64, interpolation))


def test_random_resize_rejects_unknown_interpolation() -> None:
    with pytest.raises(ValueError, match=r"interpolation must be one of \('pil', 'cv2'\), got 'nearest'"):
        RandomResize([64], interpolation="nearest")
