"""Finds or builds the native library: ahead-of-time (``setup.py``) first, then just-in-time with ninja.

The library registers the operators ``torch.ops.deformbev_native.*`` for the CPU (and, when built
with CUDA, the CUDA) dispatch keys. Any failure to build leaves the ``reference`` backend usable and is
reported once, with the compiler's message, by :func:`load_native`.

CUDA kernels are built whenever torch has CUDA and a CUDA toolkit is found (:func:`build_cuda_kernels`;
no GPU is needed at install time). When CUDA tensors meet a loaded library without CUDA kernels,
:func:`ensure_cuda_kernels` compiles them just in time, or warns once, naming the fix.
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
CPU_SOURCES = ("register.cpp", "ms_deform_attn_cpu.cpp", "deform_conv_cpu.cpp", "cpu_arena.cpp")
CUDA_SOURCES = ("ms_deform_attn_cuda.cu", "deform_conv_cuda.cu")
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


def _cuda_home() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME  # $CUDA_HOME, else nvcc on $PATH, else /usr/local/cuda

    return CUDA_HOME


def build_cuda_kernels() -> bool:
    """Whether a build (``setup.py`` or just in time) compiles the CUDA kernels: never with
    ``DEFORMBEV_OPS_NO_CUDA=1``; always with ``FORCE_CUDA=1``; else when torch is a CUDA build and a
    CUDA toolkit is found. Whether a GPU is visible does not matter (build machines often have none)."""
    if os.environ.get("DEFORMBEV_OPS_NO_CUDA", "") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "") == "1":
        return True
    return torch.version.cuda is not None and _cuda_home() is not None


def _want_cuda() -> bool:
    """A just-in-time build includes CUDA kernels only where they can run (compiling them takes minutes)."""
    return torch.cuda.is_available() and build_cuda_kernels()


def _cuda_registered() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("deformbev_native::ms_deform_attn_forward", "CUDA")


def _load_aot() -> bool:
    """Load ``ops/_C*.so`` built by ``setup.py``; False when absent, built for another torch, older
    than its sources (a kernel edited since the install), or disabled by ``DEFORMBEV_OPS_JIT=1``."""
    if os.environ.get("DEFORMBEV_OPS_JIT", "") == "1":
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


def _build_jit_cuda_kernels() -> None:
    """Compile the CUDA sources alone: they register CUDA kernels for the operators that the loaded
    (CPU-only) library defines."""
    from torch.utils.cpp_extension import load

    load(
        name="deformbev_msda_cuda_kernels",
        sources=[os.path.join(CSRC, s) for s in CUDA_SOURCES],
        extra_cflags=list(CXX_FLAGS),
        extra_ldflags=list(LD_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        extra_include_paths=[CSRC],
        with_cuda=True,
        is_python_module=False,
        verbose=os.environ.get("DEFORMBEV_VERBOSE_BUILD", "") == "1",
    )


@functools.cache
def ensure_cuda_kernels() -> bool:
    """Whether CUDA kernels are registered, for CUDA tensors: when the loaded library has none (built
    where no CUDA toolkit was found, or while torch had no CUDA), compile them just in time if a toolkit
    is found now; otherwise warn once, loudly, that CUDA tensors take the slow ``reference`` backend and
    how to fix it. Never raises; cached per process."""
    status = load_native()
    if not status.cpu:
        return False  # no native library at all: load_native has warned
    if _cuda_registered():
        return True
    cause = "no CUDA toolkit was found (nvcc, $CUDA_HOME)"
    if torch.version.cuda is None:
        cause = f"torch {torch.__version__} is not a CUDA build"
    elif build_cuda_kernels():
        try:
            _build_jit_cuda_kernels()
        except Exception as exc:  # noqa: BLE001 - reported in the warning below
            cause = f"compiling them just in time failed: {type(exc).__name__}: {str(exc)[-1500:]}"
        else:
            if _cuda_registered():
                return True
            cause = "the just-in-time CUDA library registered no kernel"
    warnings.warn(
        "deformbev: the native deformable-attention library has NO CUDA KERNELS "
        f"({status.source} build; {cause}), so CUDA tensors use the slow pure-PyTorch 'reference' backend. "
        "Fix: install the CUDA toolkit matching torch.version.cuda "
        f"({torch.version.cuda}), export CUDA_HOME (or put nvcc on PATH), then rebuild with "
        "`pip install --no-build-isolation -e .` (or run with DEFORMBEV_OPS_JIT=1).",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


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
