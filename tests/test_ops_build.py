"""Without a usable compiler the op falls back to the reference backend with one clear warning."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from msda_cases import random_inputs

from ops import extension, functional, ms_deform_attn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def broken_toolchain(monkeypatch):
    def fail(with_cuda: bool) -> None:
        raise RuntimeError("Error building extension 'deformbev_msda_cpu': c++: command not found")

    monkeypatch.setattr(extension, "_load_aot", lambda: False)
    monkeypatch.setattr(extension, "_build_jit", fail)
    extension.load_native.cache_clear()
    yield
    monkeypatch.undo()
    extension.load_native.cache_clear()


def test_fallback_to_reference_with_one_warning(broken_toolchain):
    inputs = random_inputs(0, 1, [(3, 4)], heads=2, channels=4, queries=5, points=2, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch 'reference' backend") as record:
        out = ms_deform_attn(*inputs.args())
    assert len(record) == 1 and "command not found" in str(record[0].message)
    assert functional.available_backends() == ("reference",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(ms_deform_attn(*inputs.args()), out)
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available: .*command not found"):
        ms_deform_attn(*inputs.args(), backend="cpu")


def test_native_library_is_loaded_once(native_backends):
    assert extension.load_native() is extension.load_native()
    if "cpu" in native_backends:
        assert extension.load_native().source in ("aot", "jit")


def test_just_in_time_build_matches_reference(tmp_path):
    """With DEFORMBEV_OPS_JIT=1 the ahead-of-time library is ignored and ninja builds the op (cached in
    torch's default extensions folder, so only the first run on a machine compiles)."""
    script = (
        "import torch, ops\n"
        "from ops.extension import load_native\n"
        "from msda_cases import random_case, forward_and_grads\n"
        "assert load_native().source == 'jit', load_native()\n"
        "i = random_case(0, 30)\n"
        "a = forward_and_grads(lambda *x: ops.ms_deform_attn(*x, backend='cpu'), i)\n"
        "b = forward_and_grads(lambda *x: ops.ms_deform_attn(*x, backend='reference'), i)\n"
        "assert all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(a, b))\n"
        "print('jit ok')\n"
    )
    env = {**os.environ, "DEFORMBEV_OPS_JIT": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jit ok" in done.stdout


@pytest.fixture
def cuda_torch_without_gpu(monkeypatch):
    """A CUDA build of torch, a CUDA toolkit on disk, no GPU visible (a typical build machine)."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(extension, "_cuda_home", lambda: "/usr/local/cuda")
    monkeypatch.delenv("FORCE_CUDA", raising=False)
    monkeypatch.delenv("DEFORMBEV_OPS_NO_CUDA", raising=False)


def test_cuda_kernels_are_built_without_a_visible_gpu(cuda_torch_without_gpu, monkeypatch):
    assert extension.build_cuda_kernels()
    assert not extension._want_cuda()  # a just-in-time build compiles CUDA only where it can run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert extension._want_cuda()


def test_cuda_kernels_need_cuda_torch_and_a_toolkit(cuda_torch_without_gpu, monkeypatch):
    monkeypatch.setattr(extension, "_cuda_home", lambda: None)
    assert not extension.build_cuda_kernels()
    monkeypatch.setenv("FORCE_CUDA", "1")
    assert extension.build_cuda_kernels()
    monkeypatch.setenv("DEFORMBEV_OPS_NO_CUDA", "1")
    assert not extension.build_cuda_kernels()
    monkeypatch.delenv("FORCE_CUDA")
    monkeypatch.delenv("DEFORMBEV_OPS_NO_CUDA")
    monkeypatch.setattr(extension, "_cuda_home", lambda: "/usr/local/cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert not extension.build_cuda_kernels()


def test_setup_builds_cuda_by_the_same_rule():
    """setup.py asks ops/extension.py (loaded from its file) instead of requiring a visible GPU."""
    source = (ROOT / "setup.py").read_text()
    assert "extension.build_cuda_kernels()" in source
    assert "torch.cuda.is_available" not in source


@pytest.fixture
def library_without_cuda_kernels(monkeypatch):
    """A loaded CPU-only library in a process that sees a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(
        extension, "load_native", lambda: extension.NativeStatus(cpu=True, cuda=False, source="aot")
    )
    registered = {"cuda": False}
    monkeypatch.setattr(extension, "_cuda_registered", lambda: registered["cuda"])
    extension.ensure_cuda_kernels.cache_clear()
    yield registered
    extension.ensure_cuda_kernels.cache_clear()


def test_cuda_tensors_without_cuda_kernels_warn_once_naming_the_fix(
    library_without_cuda_kernels, monkeypatch
):
    monkeypatch.setattr(extension, "build_cuda_kernels", lambda: False)
    with pytest.warns(RuntimeWarning, match="NO CUDA KERNELS") as record:
        assert functional.available_backends() == ("reference", "cpu")
    message = str(record[0].message)
    assert "no CUDA toolkit was found" in message and "CUDA_HOME" in message
    assert "pip install --no-build-isolation -e ." in message and "DEFORMBEV_OPS_JIT=1" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert functional.available_backends() == ("reference", "cpu")
    assert functional.resolve_backend(torch.device("cuda")) == "reference"


def test_missing_cuda_kernels_are_compiled_just_in_time(library_without_cuda_kernels, monkeypatch):
    builds = []

    def build() -> None:
        builds.append("cuda")
        library_without_cuda_kernels["cuda"] = True

    monkeypatch.setattr(extension, "build_cuda_kernels", lambda: True)
    monkeypatch.setattr(extension, "_build_jit_cuda_kernels", build)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert functional.available_backends() == ("reference", "cpu", "cuda")
        assert functional.available_backends() == ("reference", "cpu", "cuda")
    assert builds == ["cuda"]


def test_failed_just_in_time_cuda_build_warns_with_the_compiler_error(
    library_without_cuda_kernels, monkeypatch
):
    def fail() -> None:
        raise RuntimeError("nvcc fatal: Unsupported gpu architecture 'compute_200'")

    monkeypatch.setattr(extension, "build_cuda_kernels", lambda: True)
    monkeypatch.setattr(extension, "_build_jit_cuda_kernels", fail)
    with pytest.warns(RuntimeWarning, match="NO CUDA KERNELS.*Unsupported gpu architecture"):
        assert not extension.ensure_cuda_kernels()
