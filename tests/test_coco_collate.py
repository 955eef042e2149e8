"""Batch collation pads to the largest image and marks the padding."""

from __future__ import annotations

import torch

from datasets.collate import collate_detection, pad_images


def test_pad_images_copies_pixels_and_masks_padding() -> None:
    a = torch.randn(3, 4, 6)
    b = torch.randn(3, 5, 2)
    batch, mask = pad_images([a, b])
    assert batch.shape == (2, 3, 5, 6) and mask.shape == (2, 5, 6) and mask.dtype == torch.bool
    torch.testing.assert_close(batch[0, :, :4, :6], a)
    torch.testing.assert_close(batch[1, :, :5, :2], b)
    assert not mask[0, :4].any() and mask[0, 4:].all()
    assert not mask[1, :, :2].any() and mask[1, :, 2:].all()
    assert (batch[0, :, 4:] == 0).all() and (batch[1, :, :, 2:] == 0).all()


def test_collate_keeps_targets_in_order() -> None:
    targets = [{"image_id": torch.tensor(i), "boxes": torch.zeros(i, 4)} for i in range(3)]
    images, mask, out = collate_detection([(torch.zeros(3, 2 + i, 3), t) for i, t in enumerate(targets)])
    assert images.shape == (3, 3, 4, 3)
    assert mask.sum(dim=(1, 2)).tolist() == [6, 3, 0]
    assert out == targets
