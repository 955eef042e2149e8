"""GridMask (Chen et al., 2020) as BEVFormer's detector applies it to the training images.

BEVFormer's ``GridMask(True, True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7)`` masks the
current frame's normalized camera images in training only: its history frames are encoded in eval mode,
where the module is an identity. One mask per call covers every camera of the batch; the release trains
with one sample per GPU, so :class:`GridMask` draws one coin and one mask per sample.

The mask of an (H, W) image: a period ``d`` uniform in [2, H), stripes of width
``l = min(max(int(d * ratio + 0.5), 1), d - 1)`` every ``d`` rows (``use_h``) and columns (``use_w``)
from random starts in [0, d) on a 1.5 H x 1.5 W canvas, rotated by a random whole angle in
[0, ``rotate``) degrees, centre-cropped to H x W. Mode 0 zeroes the stripes; mode 1 (BEVFormer) keeps
only the stripes and zeroes the squares between them. With ``offset`` the zeroed pixels get uniform
noise in [-1, 1) instead.

Random numbers come from torch's global CPU generator, which training checkpoints save and restore, so
a resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn


class GridMask(nn.Module):
    """Args as BEVFormer's ``GridMask``; ``prob``: chance that a sample is masked at all."""

    def __init__(
        self,
        use_h: bool = True,
        use_w: bool = True,
        rotate: int = 1,
        offset: bool = False,
        ratio: float = 0.5,
        mode: int = 1,
        prob: float = 0.7,
    ) -> None:
        super().__init__()
        if mode not in (0, 1):
            raise ValueError(f"GridMask mode must be 0 (mask the stripes) or 1 (keep them), got {mode}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"GridMask prob must be in [0, 1], got {prob}")
        if rotate < 1:
            raise ValueError(f"GridMask rotate must be >= 1 (angles are drawn in [0, rotate)), got {rotate}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"GridMask ratio must be in (0, 1], got {ratio}")
        self.use_h, self.use_w, self.rotate, self.offset = use_h, use_w, rotate, offset
        self.ratio, self.mode, self.prob = ratio, mode, prob

    def extra_repr(self) -> str:
        return (
            f"use_h={self.use_h}, use_w={self.use_w}, rotate={self.rotate}, offset={self.offset}, "
            f"ratio={self.ratio}, mode={self.mode}, prob={self.prob}"
        )

    def mask(self, height: int, width: int) -> torch.Tensor:
        """One random mask (height, width) float32 of 0 (masked) and 1 (kept), on the CPU."""
        if height < 3:
            raise ValueError(f"GridMask needs images at least 3 pixels high, got {height}")
        canvas_h, canvas_w = int(1.5 * height), int(1.5 * width)
        period = int(torch.randint(2, height, ()).item())
        stripe = min(max(int(period * self.ratio + 0.5), 1), period - 1)
        start_h, start_w = (int(v) for v in torch.randint(period, (2,)))
        canvas = torch.ones(canvas_h, canvas_w)
        if self.use_h:
            canvas.index_fill_(0, _stripes(canvas_h, period, stripe, start_h), 0.0)
        if self.use_w:
            canvas.index_fill_(1, _stripes(canvas_w, period, stripe, start_w), 0.0)
        angle = int(torch.randint(self.rotate, ()).item())
        if angle:
            rotated = Image.fromarray(canvas.numpy().astype(np.uint8)).rotate(angle)
            canvas = torch.from_numpy(np.asarray(rotated, dtype=np.float32).copy())
        top, left = (canvas_h - height) // 2, (canvas_w - width) // 2
        mask = canvas[top : top + height, left : left + width]
        return 1.0 - mask if self.mode == 1 else mask

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Mask the images of each sample (with probability ``prob``; one mask for all its cameras and
        channels) in training; the identity in eval mode.

        Args:
            img: (B, Ncam, C, H, W) normalized images.

        Returns:
            A tensor of ``img``'s shape, dtype and device (``img`` itself in eval mode or with
            ``prob`` 0).
        """
        if img.dim() != 5:
            raise ValueError(f"GridMask expects img (B, Ncam, C, H, W), got shape {tuple(img.shape)}")
        if not self.training or self.prob == 0.0:
            return img
        batch, height, width = img.shape[0], *img.shape[-2:]
        masks = [
            self.mask(height, width) if torch.rand(()).item() < self.prob else torch.ones(height, width)
            for _ in range(batch)
        ]
        mask = torch.stack(masks)[:, None, None].to(img.device, img.dtype)
        if not self.offset:
            return img * mask
        noise = (2 * (torch.rand(batch, height, width) - 0.5))[:, None, None].to(img.device, img.dtype)
        return img * mask + noise * (1 - mask)


def _stripes(size: int, period: int, width: int, start: int) -> torch.Tensor:
    """Indices in [0, size) of the stripes ``[period * i + start, period * i + start + width)`` for
    ``i < size // period`` (BEVFormer's loop: the last partial period gets no stripe)."""
    index = torch.arange(size)
    shifted = index - start
    inside = (shifted >= 0) & (shifted % period < width) & (shifted // period < size // period)
    return index[inside]
