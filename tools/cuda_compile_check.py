"""Compile, link and load the CUDA kernels on a machine without a GPU (no kernel is run).

Needs a CUDA build of torch, nvcc, CUDA_HOME and TORCH_CUDA_ARCH_LIST (`make cuda-compile-check`
sets them). Exits non-zero, with the compiler's message, when the CUDA sources do not build.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops import extension  # noqa: E402


def main() -> None:
    if torch.version.cuda is None:
        sys.exit(f"torch {torch.__version__} is a CPU build: install a CUDA build (make cuda-compile-check)")
    sources = [os.path.join(extension.CSRC, s) for s in extension.CPU_SOURCES + extension.CUDA_SOURCES]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as build_dir:
        load(
            name="deformbev_msda_cuda_check",
            sources=sources,
            extra_cflags=list(extension.CXX_FLAGS),
            extra_ldflags=list(extension.LD_FLAGS),
            extra_cuda_cflags=list(extension.NVCC_FLAGS),
            extra_include_paths=[extension.CSRC],
            with_cuda=True,
            is_python_module=False,
            build_directory=build_dir,
        )
    kernels = ("deformbev_native::ms_deform_attn_forward", "deformbev_native::deform_conv2d_forward")
    missing = [k for k in kernels if not torch._C._dispatch_has_kernel_for_dispatch_key(k, "CUDA")]
    if missing:
        sys.exit(f"the CUDA library loaded but registered no CUDA kernel for {missing}")
    print(
        f"CUDA kernels compiled, linked and registered in {time.perf_counter() - start:.0f} s "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"arch {os.environ.get('TORCH_CUDA_ARCH_LIST')})"
    )


if __name__ == "__main__":
    main()
