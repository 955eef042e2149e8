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
    """With DEFORMBEV_MSDA_JIT=1 the ahead-of-time library is ignored and ninja builds the op (cached in
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
    env = {**os.environ, "DEFORMBEV_MSDA_JIT": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "jit ok" in done.stdout
