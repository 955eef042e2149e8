"""``ms_deform_attn``: one function in front of the reference, CPU and CUDA backends."""

from __future__ import annotations

import os

import torch

from .extension import ensure_cuda_kernels, load_native
from .native import ms_deform_attn_native
from .reference import ms_deform_attn_reference
from .validation import check_inputs

BACKENDS = ("reference", "cpu", "cuda")
ENV_BACKEND = "DEFORMBEV_MSDA_BACKEND"


@torch.compiler.assume_constant_result
def available_backends() -> tuple[str, ...]:
    """Backends usable in this process (builds the native library on first call; a constant to
    ``torch.compile``). With a GPU visible, a library without CUDA kernels gets them compiled just in
    time, or a loud warning that CUDA tensors take ``reference`` (``extension.ensure_cuda_kernels``)."""
    status = load_native()
    cuda = status.cpu and torch.cuda.is_available() and ensure_cuda_kernels()
    return ("reference",) + (("cpu",) if status.cpu else ()) + (("cuda",) if cuda else ())


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend to run on ``device``: the explicit choice, else ``$DEFORMBEV_MSDA_BACKEND``, else
    the native kernel of that device when it built, else ``reference``."""
    choice = backend if backend is not None else (os.environ.get(ENV_BACKEND) or None)
    if choice is None:
        native = "cuda" if device.type == "cuda" else "cpu" if device.type == "cpu" else None
        return native if native in available_backends() else "reference"
    if choice not in BACKENDS:
        source = "backend" if backend is not None else f"${ENV_BACKEND}"
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {choice!r}")
    if choice == "reference":
        return choice  # never builds the native library
    if choice != device.type:
        raise ValueError(f"backend {choice!r} cannot run on tensors on {device}")
    if choice not in available_backends():
        raise RuntimeError(f"backend {choice!r} is not available: {load_native().error or 'not built'}")
    return choice


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    backend: str | None = None,
) -> torch.Tensor:
    """Multi-scale deformable attention.

    Mixed precision: ``value`` may be float16/bfloat16 while ``sampling_locations`` and
    ``attention_weights`` are float32 (or lower); every backend then samples at float32 positions,
    accumulates in float32 and returns the output in ``value``'s dtype; each gradient has the dtype of
    its input.

    Args:
        value: (N, S, M, D) with S = sum_l H_l * W_l; float16, bfloat16, float32 or float64.
        spatial_shapes: (L, 2) int64 rows (H_l, W_l).
        level_start_index: (L,) int64, the exclusive cumsum of H_l * W_l.
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y); outside [0, 1] reads zeros, and a
            non-finite location (NaN, +-inf) samples nothing, with zero gradients.
        attention_weights: (N, Lq, M, L, P), already normalized over L * P.
        im2col_step: a positive int, accepted for compatibility with the original op and ignored (the
            kernels process the whole batch at once; any batch size works).
        backend: 'reference', 'cpu', 'cuda' or None (``$DEFORMBEV_MSDA_BACKEND``, else automatic).

    Returns:
        (N, Lq, M * D) in value's dtype, differentiable in value, sampling_locations and
        attention_weights.

    Raises:
        ValueError: on malformed inputs (naming the argument and the expected shape).
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step)
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if resolve_backend(value.device, backend) == "reference":
        return ms_deform_attn_reference(*args)
    return ms_deform_attn_native(*args)
