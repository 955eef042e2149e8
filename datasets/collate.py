"""Batch collation: pad images to the batch's largest height and width and mark the padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad images at the bottom and right to a common size.

    Args:
        images: B tensors (C, H_i, W_i).

    Returns:
        ``batch`` (B, C, H, W) with H = max H_i, W = max W_i, and ``mask`` (B, H, W) bool, True on
        padding, False on image pixels.
    """
    channels = images[0].shape[0]
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    batch = images[0].new_zeros((len(images), channels, height, width))
    mask = torch.ones((len(images), height, width), dtype=torch.bool)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = False
    return batch, mask


def collate_detection(
    samples: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """``DataLoader`` collate function for (image (3, H_i, W_i), target) samples.

    Returns:
        images (B, 3, H, W), mask (B, H, W) bool True on padding, and the list of B targets unchanged.
    """
    images, targets = zip(*samples, strict=True)
    batch, mask = pad_images(images)
    return batch, mask, list(targets)
