"""Project-wide pytest fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def native_backends() -> tuple[str, ...]:
    """Backends of the op built for this session (the native library compiles once, here)."""
    from ops import available_backends

    return available_backends()


@pytest.fixture(scope="session")
def cpu_backend(native_backends) -> str:
    if "cpu" not in native_backends:
        pytest.skip("the native CPU op could not be built on this machine")
    return "cpu"


@pytest.fixture(scope="session")
def cuda_backend(native_backends) -> str:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if "cuda" not in native_backends:
        pytest.fail("a CUDA device is present but the CUDA op did not build")
    return "cuda"
