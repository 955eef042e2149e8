"""Without a usable compiler the op falls back to the reference backend with one clear warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from msda_cases import random_inputs

from ops import extension, functional, ms_deform_attn


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
