"""Pure-PyTorch modulated deformable convolution (DCNv2): the oracle the native kernels are tested against.

Bilinear sampling in pixel coordinates (the corner (h, w) holds ``input[..., h, w]``, corners outside the
image read zero, a non-finite position contributes zero) at every kernel point's displaced position,
scaled by the mask, then one matmul per convolution group. Sampling is written with ``floor`` and
``gather`` (not ``grid_sample``) so that integer positions -- zero offsets, as at initialization -- are
handled exactly like the native kernels do.
"""

from __future__ import annotations

import torch


def sampling_positions(
    offset: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    deform_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x) of every kernel point, each (N, G, K, Ho, Wo) with K = kh * kw.

    Args:
        offset: (N, 2 * G * K, Ho, Wo), channel 2 * (g * K + k) is dy, 2 * (g * K + k) + 1 is dx.
    """
    n, _, out_h, out_w = offset.shape
    kernel_h, kernel_w = kernel_size
    k = kernel_h * kernel_w
    options = {"dtype": offset.dtype, "device": offset.device}
    ky = (torch.arange(kernel_h, **options) * dilation[0]).repeat_interleave(kernel_w)  # (K,)
    kx = (torch.arange(kernel_w, **options) * dilation[1]).repeat(kernel_h)
    rows = torch.arange(out_h, **options) * stride[0] - padding[0]
    cols = torch.arange(out_w, **options) * stride[1] - padding[1]
    deltas = offset.view(n, deform_groups, k, 2, out_h, out_w)
    y = ky[:, None, None] + rows[None, :, None] + deltas[:, :, :, 0]
    x = kx[:, None, None] + cols[None, None, :] + deltas[:, :, :, 1]
    return y, x


def bilinear_sample(input: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``input`` at pixel coordinates, zero outside the image and at non-finite ones.

    Args:
        input: (N, G, Cg, H, W), the channels of each deform group.
        y, x: (N, G, P) pixel coordinates shared by the group's channels.

    Returns:
        (N, G, Cg, P).
    """
    n, g, cg, height, width = input.shape
    flat = input.reshape(n, g, cg, height * width)
    # A non-finite position (NaN / inf offset) contributes zero, as in the native kernels: it is moved
    # to (-2, -2), where all four corners lie outside the image.
    finite = y.isfinite() & x.isfinite()
    y, x = torch.where(finite, y, -2.0), torch.where(finite, x, -2.0)
    y0, x0 = y.floor(), x.floor()
    ly, lx = y - y0, x - x0
    out = input.new_zeros(n, g, cg, y.shape[-1])
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            row, col = y0 + dy, x0 + dx
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            index = (row.clamp(0, height - 1) * width + col.clamp(0, width - 1)).long()
            values = flat.gather(3, index[:, :, None, :].expand(n, g, cg, -1))
            out = out + values * (wy * wx * inside)[:, :, None, :]
    return out


def deform_conv2d_reference(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    deform_groups: int,
) -> torch.Tensor:
    """Modulated deformable convolution, differentiable by autograd.

    Args:
        input: (N, C, H, W).
        offset: (N, 2 * G * K, Ho, Wo), (dy, dx) per deform group g and kernel point k = i * kw + j.
        mask: (N, G * K, Ho, Wo).
        weight: (O, C / groups, kh, kw).
        bias: (O,) or None.

    Returns:
        (N, O, Ho, Wo).
    """
    n, c, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    g, k, positions = deform_groups, kernel_h * kernel_w, out_h * out_w
    y, x = sampling_positions(offset, (kernel_h, kernel_w), stride, padding, dilation, g)
    grouped = input.view(n, g, c // g, height, width)
    sampled = bilinear_sample(grouped, y.reshape(n, g, k * positions), x.reshape(n, g, k * positions))
    # (N, G, C/G, K * L) scaled by the mask; as (N, groups, C/groups * K, L) it is the im2col matrix whose
    # rows are ordered (channel, kernel point) like the flattened weight.
    columns = sampled * mask.reshape(n, g, 1, k * positions)
    columns = columns.view(n, groups, c // groups * k, positions)
    output = weight.reshape(groups, out_channels // groups, -1) @ columns
    output = output.view(n, out_channels, out_h, out_w)
    if bias is not None:
        output = output + bias.view(1, -1, 1, 1)
    return output
