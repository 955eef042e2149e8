"""``ms_deform_attn``: one function in front of the reference, CPU and CUDA backends."""

from __future__ import annotations

import os

import torch

from .reference import ms_deform_attn_reference
from .validation import check_inputs

BACKENDS = ("reference", "cpu", "cuda")
ENV_BACKEND = "DEFORMBEV_MSDA_BACKEND"


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention (TEMPORARY: reference only while the native backends land)."""
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    del backend
    return ms_deform_attn_reference(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
