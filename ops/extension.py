"""Finds or builds the native library: ahead-of-time (``setup.py``) first, then just-in-time with ninja.

The library registers the operators ``torch.ops.deformbev_native.*`` for the CPU (and, when built
with CUDA, the CUDA) dispatch keys. Any failure to build leaves the ``reference`` backend usable and is
reported once, with the compiler's message, by :func:`load_native`.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import warnings
from dataclasses import dataclass

import torch

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
CPU_SOURCES = ("register.cpp", "ms_deform_attn_cpu.cpp")
CUDA_SOURCES = ("ms_deform_attn_cuda.cu",)
CXX_FLAGS = ("-O3", "-fopenmp")
LD_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3",)
AOT_LIBRARY = "_C"


@dataclass(frozen=True)
class NativeStatus:
    """What the native library provides in this process."""

    cpu: bool
    cuda: bool
    source: str  # "aot", "jit" or "" when unavailable
    error: str = ""


def _want_cuda() -> bool:
    return torch.cuda.is_available() and os.environ.get("DEFORMBEV_MSDA_NO_CUDA", "") != "1"


def _cuda_registered() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("deformbev_native::ms_deform_attn_forward", "CUDA")


def _load_aot() -> bool:
    """Load ``ops/_C*.so`` built by ``setup.py``; False when absent, built for another torch, older
    than its sources (a kernel edited since the install), or disabled by ``DEFORMBEV_MSDA_JIT=1``."""
    if os.environ.get("DEFORMBEV_MSDA_JIT", "") == "1":
        return False
    package = os.path.dirname(os.path.abspath(__file__))
    libraries = glob.glob(os.path.join(package, f"{AOT_LIBRARY}*.so"))
    info_path = os.path.join(package, f"{AOT_LIBRARY}_build.json")
    if len(libraries) != 1 or not os.path.exists(info_path):
        return False
    with open(info_path) as f:
        if json.load(f).get("torch") != torch.__version__:
            return False
    newest_source = max(os.path.getmtime(p) for p in glob.glob(os.path.join(CSRC, "*")))
    if os.path.getmtime(libraries[0]) < newest_source:
        return False
    torch.ops.load_library(libraries[0])
    return True


def _build_jit(with_cuda: bool) -> None:
    from torch.utils.cpp_extension import load

    sources = [os.path.join(CSRC, s) for s in CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())]
    load(
        name="deformbev_msda_cuda" if with_cuda else "deformbev_msda_cpu",
        sources=sources,
        extra_cflags=list(CXX_FLAGS),
        extra_ldflags=list(LD_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_include_paths=[CSRC],
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=os.environ.get("DEFORMBEV_VERBOSE_BUILD", "") == "1",
    )


@functools.cache
def load_native() -> NativeStatus:
    """Load the native operators once per process; never raises, warns once on failure."""
    if _load_aot():
        return NativeStatus(cpu=True, cuda=_cuda_registered(), source="aot")
    try:
        _build_jit(with_cuda=_want_cuda())
    except Exception as exc:  # noqa: BLE001 - any build failure means: use the reference backend
        message = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            "deformbev: could not build the native deformable-attention op; falling back to the "
            f"pure-PyTorch 'reference' backend (slower). Cause: {message[-2000:]}",
            RuntimeWarning,
            stacklevel=2,
        )
        return NativeStatus(cpu=False, cuda=False, source="", error=message)
    return NativeStatus(cpu=True, cuda=_cuda_registered(), source="jit")
