"""Padding of a batch: exact (each image gets what it gets alone) or official (the original's).

A batch is padded to its largest image, with a mask that is True on padding. Two modes:

``"exact"`` (default). In a plain implementation padding leaks into valid positions in three ways:
spatial convolutions read padded neighbours (which hold non-zero activations after the first
normalization), GroupNorm takes statistics over padded positions, and nearest-interpolated level
masks are off by one cell when the padded size is not a multiple of the stride. This mode removes all
three, so an image in a padded batch gets the same predictions as that image run alone:

- :func:`level_mask` subsamples the image mask at the level's stride: cell i is valid iff pixel
  i * stride is, which marks exactly the ``ceil(valid / stride)`` cells that exist for the image
  alone (every strided layer here outputs ``ceil(size / 2)``). Whenever the padded size is a multiple
  of the stride this equals the official nearest interpolation;
- :class:`PaddingMasks` zeroes padded positions before every spatial operation, which then reads
  the same zeros as the zero padding of the image alone;
- :class:`MaskedGroupNorm` takes its statistics over valid positions only.

``"official"``: the original Deformable DETR's behaviour, which the published numbers were measured
with. The backbone and the input projections (convolutions, GroupNorm) run on the padded batch as it
is, and every level's mask is the image mask resized by nearest interpolation
(:func:`nearest_mask`). A padded image's predictions then depend on the batch it is in.

Without padding both modes are identities, so official checkpoints give their usual outputs.

Tracing (``torch.export``, ``torch.compile``). Without a mask the batch is known to be unpadded without
reading a tensor, so the traced graph is the unpadded math with free image sizes. With a mask, whether
anything is padded is data: eager calls read it (and skip the masked math when nothing is padded),
traced calls always run the masked math, which equals the unmasked math on an all-False mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PADDING_MODES = ("exact", "official")


def check_images_and_mask(images: Tensor, mask: Tensor | None) -> Tensor:
    """Validate a padded batch; return its mask (all False when ``mask`` is None).

    Args:
        images: (B, 3, H, W) floating tensor.
        mask: (B, H, W) bool, True on padding, or None.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating tensor, got {images.dtype}")
    b, _, h, w = images.shape
    if mask is None:
        return torch.zeros(b, h, w, dtype=torch.bool, device=images.device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (b, h, w):
        raise ValueError(
            f"mask must be a bool tensor of shape {(b, h, w)}, got "
            f"{getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}"
        )
    if mask.device != images.device:
        raise ValueError(f"mask is on {mask.device} but images are on {images.device}")
    if not torch.compiler.is_compiling() and bool(mask.flatten(1).all(1).any()):  # no data while tracing
        raise ValueError("mask marks every pixel of an image as padding; each image needs a valid pixel")
    return mask


def any_padding(mask: Tensor) -> bool:
    """Whether the bool ``mask`` marks any padding: read from the data in eager mode; True while tracing
    (``torch.compiler.is_compiling()``), so that traced graphs take the masked path, exact for any mask."""
    return torch.compiler.is_compiling() or bool(mask.any())


def _stride(full: int, size: int) -> int:
    """The power-of-two stride s with ``ceil(full / s) == size``."""
    stride = 1
    while -(-full // stride) > size:
        stride *= 2
    if -(-full // stride) != size:
        raise ValueError(f"a map of size {size} is not a power-of-two stride of the image size {full}")
    return stride


def level_mask(mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Mask (B, h, w) of a feature map of spatial ``size`` computed from (B, H, W) ``mask`` by
    power-of-two strides s (h = ceil(H / s)): ``mask[:, ::s_h, ::s_w]``."""
    h, w = int(size[0]), int(size[1])
    return mask[:, :: _stride(mask.shape[1], h), :: _stride(mask.shape[2], w)]


def nearest_mask(mask: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """The original's level mask: (B, H, W) ``mask`` resized to ``size`` (h, w) by nearest interpolation,
    ``F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]`` -> (B, h, w)."""
    return F.interpolate(mask[None].float(), size=(int(size[0]), int(size[1]))).to(torch.bool)[0]


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of valid columns and rows of a top-left-aligned (B, H, W) mask -> (B, 2) as (w, h)."""
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / h
    valid_w = (~mask[:, 0, :]).sum(1).float() / w
    return torch.stack([valid_w, valid_h], dim=-1)


class PaddingMasks:
    """The padding mask of one batch at any feature resolution, and how layers treat padding (cached).

    Args:
        mask: (B, H, W) bool, True on padding, for the (padded) input images.
        mode: ``"exact"`` (padded positions are zeroed and excluded from normalization; level masks by
            :func:`level_mask`) or ``"official"`` (layers see the padded values; level masks by
            :func:`nearest_mask`). See the module docstring.
        given: False when the caller gave no mask (``mask`` is then all False): the batch is unpadded,
            known without reading ``mask`` (what ``torch.export`` traces with free image sizes).
    """

    def __init__(self, mask: Tensor, mode: str = "exact", given: bool = True) -> None:
        if mode not in PADDING_MODES:
            raise ValueError(f"padding mode must be one of {PADDING_MODES}, got {mode!r}")
        self.mask = mask
        self.exact = mode == "exact"
        self.has_padding = given and any_padding(mask)
        self._resize = level_mask if self.exact else nearest_mask
        self._cache: dict[tuple[int, int], Tensor] = (
            {tuple(mask.shape[-2:]): mask} if self.has_padding else {}
        )

    def at(self, size: tuple[int, int] | torch.Size) -> Tensor:
        """(B, h, w) mask for a feature map of spatial size ``size`` (ints, or SymInts when unpadded)."""
        if not self.has_padding:
            return self.mask.new_zeros((self.mask.shape[0], size[0], size[1]))
        key = (int(size[0]), int(size[1]))
        if key not in self._cache:
            self._cache[key] = self._resize(self.mask, key)
        return self._cache[key]

    def zero(self, x: Tensor) -> Tensor:
        """Zero the padded positions of a (B, C, h, w) feature map (exact mode; else ``x`` itself)."""
        if not (self.exact and self.has_padding):
            return x
        return x.masked_fill(self.at(x.shape[-2:])[:, None], 0.0)

    def norm_mask(self, size: tuple[int, int] | torch.Size) -> Tensor | None:
        """The (B, h, w) positions a normalization must ignore at ``size``: None when there are none
        (no padding, or official mode, where GroupNorm takes statistics over the padding too)."""
        return self.at(size) if self.exact and self.has_padding else None


class MaskedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose statistics cover only valid positions; padded outputs are zero.

    Same parameters and checkpoint names as ``nn.GroupNorm``; equal to it when nothing is padded.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize (B, C, H, W) ``x``; ``mask`` (B, H, W) bool is True on padding, or None."""
        if mask is None or not any_padding(mask):
            return super().forward(x)
        b, c, h, w = x.shape
        g = self.num_groups
        valid = (~mask).float().reshape(b, 1, 1, h * w)
        xg = x.float().reshape(b, g, c // g, h * w)  # statistics in float32, also under autocast
        count = valid.sum(-1, keepdim=True) * (c // g)  # (B, 1, 1, 1)
        mean = (xg * valid).sum((2, 3), keepdim=True) / count
        centred = (xg - mean) * valid
        var = centred.square().sum((2, 3), keepdim=True) / count
        y = (centred * torch.rsqrt(var + self.eps)).view(b, c, h, w)
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y.masked_fill(mask[:, None], 0.0).to(x.dtype)
