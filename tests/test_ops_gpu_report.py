"""tools/gpu_report.py (the Python part of tools/gpu_check.sh) rehearsed on the CPU: every step runs with
tiny sizes, and a failing step is recorded without stopping the others, so the one GPU run cannot fail
for a reason other than the GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = (
    "environment",
    "timing",
    "wide channels",
    "large value (64-bit indexing)",
    "autocast",
    "torch.compile",
    "deterministic algorithms",
    "Deformable DETR training, native vs reference",
)


def test_rehearsal_runs_every_step_and_survives_a_failing_one(cpu_backend, tmp_path):
    report = tmp_path / "gpu_report.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gpu_report.py"), "--rehearse", "--report", str(report)]
        + ["--fail", "wide channels"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = report.read_text()
    assert done.returncode == 1, done.stderr[-3000:]
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == list(STEPS)
    for section in sections:
        name = section.splitlines()[0]
        expected = "(FAILED" if name == "wide channels" else "(ok"
        assert expected in section, section
    assert "a deliberate failure to rehearse the report" in text
    assert text.rstrip().endswith("**failed steps: wide channels**")
    rows = [line for line in sections[1].splitlines() if line.startswith(("| encoder", "| decoder"))]
    assert len(rows) == 2 * 2 * 2 * 2  # case x N x dtype x mode
    assert (tmp_path / "timings.json").exists()


@pytest.mark.slow
def test_gpu_check_script_rehearsal(cpu_backend, tmp_path):
    """The shell script around it (build, CUDA tests, report, sanitizer) in its CPU rehearsal."""
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh")],
        env={
            **os.environ,
            "REHEARSE": "1",
            "OUT": str(tmp_path),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (tmp_path / "gpu_report.md").read_text()
    for title in (
        "## Build (exit 0",
        "## CUDA tests: ",
        "## tools/gpu_report.py (exit 0",
        "all steps passed",
    ):
        assert title in text
