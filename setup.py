"""deformbev: Deformable DETR and a multi-camera BEV detector on one deformable-attention op.

Install (torch must already be installed; keep it out of build isolation so the op is built against
the torch you run):

    pip install --no-build-isolation -e .

The op's native library is built here ahead of time (CPU kernels always; CUDA kernels when a CUDA
toolchain and a CUDA build of torch are present, or with FORCE_CUDA=1). Without this step the op
compiles itself just in time on first use (ninja).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "ops" / "csrc"
CPU_SOURCES = ["register.cpp", "ms_deform_attn_cpu.cpp", "deform_conv_cpu.cpp", "cpu_arena.cpp"]
CUDA_SOURCES = ["ms_deform_attn_cuda.cu", "deform_conv_cuda.cu"]
PACKAGES = ("ops", "detr2d", "bev", "datasets", "configs")
REQUIREMENTS = [
    line.strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def with_cuda() -> bool:
    """``ops.extension.build_cuda_kernels``: CUDA kernels whenever torch has CUDA and a CUDA toolkit is
    found (no GPU needed here), FORCE_CUDA=1 forces, DEFORMBEV_OPS_NO_CUDA=1 prevents. The module is
    loaded from its file, without importing the ``ops`` package."""
    spec = importlib.util.spec_from_file_location("deformbev_ops_extension", ROOT / "ops" / "extension.py")
    extension = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = extension  # dataclasses look their module up there
    spec.loader.exec_module(extension)
    return extension.build_cuda_kernels()


def native_extension():
    cuda = with_cuda()
    sources = [str(Path("ops/csrc") / s) for s in CPU_SOURCES + (CUDA_SOURCES if cuda else [])]
    kwargs = dict(
        name="ops._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": ["-O3", "-fopenmp"], "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )
    # The build records the torch it was built against; ops/extension.py loads it only for that torch.
    (ROOT / "ops" / "_C_build.json").write_text(json.dumps({"torch": torch.__version__, "cuda": cuda}))
    return CUDAExtension(**kwargs) if cuda else CppExtension(**kwargs)


setup(
    name="deformbev",
    version="0.1.0",
    description="Deformable DETR and a BEVFormer-style detector on one multi-scale deformable attention op",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=[f"{p}{s}" for p in PACKAGES for s in ("", ".*")]),
    package_data={"ops": ["csrc/*.h", "csrc/*.cpp", "csrc/*.cu", "_C_build.json"]},
    install_requires=["torch>=2.4", *REQUIREMENTS],
    extras_require={
        "dev": ["pytest", "hypothesis", "ruff"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],  # tools/export.py, tests/test_export.py
    },
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
