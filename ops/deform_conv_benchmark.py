"""DCNv2 cases of the op benchmark (used by ops/benchmark.py and tools/benchmark_ops.py).

The shapes are the 3x3 DCN convolutions of a ResNet-101 (stride-1 blocks, mmdet's ``conv2`` with
``bias=False``) on the BEVFormer-base input of 900 x 1600 pixels, one camera image (N = 1; a six-camera
sample is N = 6): stage 3 at stride 16 is 57 x 100 with 256 channels, stage 4 at stride 32 is 29 x 50
with 512 channels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .deform_conv import deform_conv2d

DCN_CASES = {"dcn_stage3": (256, 57, 100), "dcn_stage4": (512, 29, 50)}  # channels, height, width
OFFSET_STD = 2.0  # pixels


def make_dcn_inputs(case: str, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(input (1, C, H, W), offset (1, 18, H, W) normal with std 2 px, mask (1, 9, H, W) = sigmoid of a
    normal, weight (C, C, 3, 3) with mmcv's init scale)."""
    channels, height, width = DCN_CASES[case]
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(1, channels, height, width, generator=g)
    offset = torch.randn(1, 18, height, width, generator=g) * OFFSET_STD
    mask = torch.randn(1, 9, height, width, generator=g).sigmoid()
    weight = (torch.rand(channels, channels, 3, 3, generator=g) * 2 - 1) / (9 * channels) ** 0.5
    return tuple(t.to(device=device, dtype=dtype) for t in (input, offset, mask, weight))


def make_dcn_step(backend: str, case: str, dtype: torch.dtype, device: str, mode: str) -> Callable[[], None]:
    """One 3x3 DCN convolution (padding 1) on :func:`make_dcn_inputs`; ``mode`` "forward" or
    "forward+backward" (gradients of all four inputs)."""
    tensors = make_dcn_inputs(case, dtype, device)
    backward = mode == "forward+backward"
    for t in tensors:
        t.requires_grad_(backward)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            out = deform_conv2d(*tensors, padding=1, backend=backend)
            if backward:
                out.backward(torch.ones_like(out))
        for t in tensors:
            t.grad = None

    return step
