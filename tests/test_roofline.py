"""The stage profile of detr2d.runtime.roofline: work counted by hand on a tiny model, stages by module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detr2d.runtime.roofline import (
    ATTENTION_OP,
    BACKBONE_CONVOLUTIONS,
    BETWEEN_OPERATORS,
    EVERYTHING_ELSE,
    MATRIX_PRODUCTS,
    NECK,
    STAGES,
    MachineLimits,
    format_profile,
    profile_stages,
)
from ops.functional import available_backends, ms_deform_attn

LIMITS = MachineLimits(gemm_flops=1e9, cache_bandwidth=1e9, memory_bandwidth=1e8, cache_bytes=2**20)


class Tiny(nn.Module):
    """conv 3x3 (3 -> 8) + ReLU as the backbone, conv 1x1 (8 -> 4) as the neck, a linear head 4 -> 5."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
        self.neck = nn.Conv2d(8, 4, 1, bias=False)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.neck(self.backbone(x))  # (1, 4, 16, 16)
        return self.head(features.flatten(2).transpose(1, 2))  # (1, 256, 5)


def test_work_of_every_stage_counted_by_hand():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 3, 16, 16)
    profile = profile_stages(lambda: model(x), [model.backbone], [model.neck], LIMITS, runs=1)
    stages = {stage.stage: stage for stage in profile.stages}
    assert [stage.stage for stage in profile.stages] == list(STAGES)
    pixels = 16 * 16
    assert stages[BACKBONE_CONVOLUTIONS].flops == 2 * 8 * pixels * 3 * 9
    assert stages[BACKBONE_CONVOLUTIONS].operators == 1
    assert stages[NECK].flops == 2 * 4 * pixels * 8
    assert stages[MATRIX_PRODUCTS].flops == 2 * pixels * 5 * 4
    assert stages[ATTENTION_OP].operators == 0 and stages[ATTENTION_OP].floor_seconds == 0
    # the ReLU reads and writes 8 x 256 float32 (views move nothing, so that is a lower bound of the rest)
    assert stages[EVERYTHING_ELSE].nbytes >= 2 * 8 * pixels * 4
    # a convolution's floor: its FLOPs at the GEMM rate, or its bytes at the cache bandwidth if larger
    conv = stages[BACKBONE_CONVOLUTIONS]
    conv_bytes = (3 * pixels + 8 * 3 * 9 + 8 * pixels) * 4
    assert conv.nbytes == conv_bytes
    assert conv.floor_seconds == pytest.approx(max(conv.flops / 1e9, conv_bytes / 1e9))
    assert profile.floor_seconds == pytest.approx(sum(stage.floor_seconds for stage in profile.stages))
    assert stages[BETWEEN_OPERATORS].floor_seconds == 0
    assert all(stage.seconds >= 0 for stage in profile.stages)
    table = format_profile(profile, LIMITS)
    assert table.count("\n| ") == len(STAGES) + 1 and "**whole call**" in table


@pytest.mark.skipif("cpu" not in available_backends(), reason="native CPU op not built")
def test_attention_op_moves_its_corner_rows():
    torch.manual_seed(0)
    shapes = torch.tensor([[6, 8], [3, 4]])
    start = torch.tensor([0, 48])
    n, lq, m, d, levels, points = 1, 10, 2, 16, 2, 3
    value = torch.randn(n, 60, m, d)
    locations = torch.rand(n, lq, m, levels, points, 2)
    weights = torch.rand(n, lq, m, levels, points).softmax(-1)

    def call() -> torch.Tensor:
        return ms_deform_attn(value, shapes, start, locations, weights, backend="cpu")

    profile = profile_stages(call, [], [], LIMITS, runs=1)
    attention = next(stage for stage in profile.stages if stage.stage == ATTENTION_OP)
    assert attention.operators == 1
    corner_rows = n * lq * m * levels * points * 4
    assert attention.nbytes == corner_rows * d * 4
    assert attention.floor_seconds == pytest.approx(corner_rows * d * 4 / 1e9)  # value fits the "cache"


def test_limits_pick_the_bandwidth_of_where_the_bytes_live():
    assert LIMITS.bandwidth(2**20) == 1e9
    assert LIMITS.bandwidth(2**20 + 1) == 1e8
