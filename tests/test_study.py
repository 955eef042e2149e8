"""``tools/study.py`` (``make study``; engine ``detr2d.runtime.study``): the model table's selection and
overrides, the report from fixture numbers (tables, computed sentences, PNGs), and (slow) the tiny study
end to end, killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import study  # noqa: E402

from detr2d.runtime.study import RESULT, SPEC, reusable_result  # noqa: E402
from detr2d.runtime.study_report import compare, write_report  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _coco_result(ap: list[float], latency: tuple[float, float], aps: float = 0.1) -> dict:
    history = [
        {"epoch": i + 1, "train_time_s": 60.0 * (i + 1), "metrics": {"AP": v, "AP50": v + 0.2}}
        for i, v in enumerate(ap)
    ]
    return {
        "params": 11_500_000,
        "train_time_s": 60.0 * len(ap),
        "images_per_s": 12.5,
        "peak_rss_mb": 700.0,
        "latency_ms": {"eager": latency[0], "fast": latency[1]},
        "metrics": {"AP": ap[-1], "AP50": ap[-1] + 0.2, "APs": aps, "APm": 0.3, "APl": -1.0},
        "history": history,
        "settings": {"image size": 96, "queries": 20, "epochs": len(ap)},
    }


def _nusc_result(nds: float, mave: float, history_frames: int) -> dict:
    errors = {"mATE": 0.8, "mASE": 0.3, "mAOE": 0.9, "mAVE": mave, "mAAE": 0.4}
    return {
        "params": 1_500_000,
        "train_time_s": 300.0,
        "images_per_s": 20.0,
        "peak_rss_mb": 900.0,
        "latency_ms": {"eager": 200.0, "fast": 100.0},
        "metrics": {"NDS": nds, "mAP": nds / 2, **errors, "per_class_AP": {"car": nds, "bus": 0.0}},
        "history": [{"epoch": 1, "train_time_s": 300.0, "metrics": {"NDS": nds}}],
        "settings": {"image size": [192, 108], "queries": 100, "history frames": history_frames},
    }


def _entry(group: str, name: str, status: str, result: dict | None = None, reason: str = "") -> dict:
    return {"group": group, "name": name, "config": f"configs/{name}.py", "status": status, "reason": reason,
            "note": f"{name} note" if name == "bevformer" else "", "result": result}  # fmt: skip


ENTRIES = [
    _entry("2d", "detr", "failed", reason="ValueError: boom"),
    _entry("2d", "slow_starter", "trained", _coco_result([0.05, 0.20, 0.40], (50.0, 25.0))),
    _entry("2d", "quick", "reused", _coco_result([0.30, 0.35, 0.38], (40.0, 32.0), aps=0.1)),
    _entry("bev", "petr", "not available", reason="configs/bev/petr_demo.py does not exist yet"),
    _entry("bev", "detr3d", "trained", _nusc_result(0.20, 0.90, 0)),
    _entry("bev", "bevformer", "trained", _nusc_result(0.30, 0.45, 1)),
]
SETTINGS = {
    "profile": "fixture",
    "data": {"2d": "shapes", "bev": "scenes"},
    "machine": "test",
    "wall_s": 90.0,
    "latency": "batch 1",
}


def test_report_from_fixture_numbers(tmp_path: Path) -> None:
    path = write_report(tmp_path, ENTRIES, SETTINGS)
    report = path.read_text()
    for heading in (
        "## Runs",
        "## 2D:",
        "## BEV:",
        "## Latency vs accuracy",
        "## Settings",
        "## Differences",
    ):
        assert heading in report
    assert "| 2d | detr | `configs/detr.py` | failed | ValueError: boom |" in report
    assert (
        "| bev | petr | `configs/petr.py` | not available | configs/bev/petr_demo.py does not exist yet |"
        in report
    )
    assert (
        "| slow_starter | 0.400 | 0.600 | 0.100 | 0.300 | n/a | 11.50 | 180 | 12.5 | 700 | 50.0 | 25.0 |"
        in report
    )
    # computed sentences: the best, its margin over the next, relative reductions for errors, ties, no -1
    assert "**slow_starter** has the highest final COCO AP: 0.400, 0.020 above quick (0.380)." in report
    assert (
        "**quick** has the highest AP after the first epoch: 0.300, 0.250 above slow_starter (0.050)."
        in report
    )
    assert "**slow_starter and quick** tie for the highest APs: 0.100 (every model)." in report
    assert "APl" not in "".join(line for line in report.splitlines() if line.startswith("- "))
    assert (
        "**bevformer** has the lowest velocity error (m/s) (mAVE): 0.450, 0.450 below detr3d (0.900), "
        "50% less." in report
    )
    assert "**bevformer** has the highest NDS: 0.300, 0.100 above detr3d (0.200)." in report
    assert "The fast path runs 1.25x (quick) to 2.00x (slow_starter) the speed of eager inference." in report
    assert "bev (differing: history frames):" in report
    assert "2d (every setting is the same for every model):" in report
    assert "- bevformer: bevformer note" in report
    for png in ("study_2d_ap.png", "study_bev_metrics.png", "study_latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG
        assert f"]({png})" in report


def test_report_without_results_has_no_plots(tmp_path: Path) -> None:
    report = write_report(tmp_path, [ENTRIES[0], ENTRIES[3]], SETTINGS).read_text()
    assert "| bev | petr |" in report and "## 2D:" not in report
    assert not list(tmp_path.glob("*.png"))


def test_compare_leaves_undefined_values_out() -> None:
    rows = [{"name": "a", "v": -1.0}, {"name": "b", "v": float("nan")}, {"name": "c", "v": 0.5}]
    assert (
        compare(rows, lambda e: e["v"], "AP", True)
        == "**c** has the highest AP: 0.500 (the only model with a value)."
    )
    assert compare(rows[:2], lambda e: e["v"], "AP", True) == ""


def test_model_selection_and_group_overrides() -> None:
    assert [m.name for m in study.select("bev")] == ["detr3d", "petr", "petrv2", "bevformer"]
    assert [m.name for m in study.select("bevformer,deformable_detr")] == ["deformable_detr", "bevformer"]
    assert len(study.select("all")) == len(study.MODELS)
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        study.select("nope,2d")
    items = ["train.seed=1", "2d:data.root=/coco", "bev:data.root=/nusc"]
    assert study.group_overrides(items, "2d") == ["train.seed=1", "data.root=/coco"]
    assert study.group_overrides(items, "bev") == ["train.seed=1", "data.root=/nusc"]


def test_every_2d_model_gets_the_demo_settings_and_missing_configs_are_named() -> None:
    shared = study.shared_2d_overrides()
    assert "model.backbone=resnet18" in shared and "augment.scales=[96]" in shared
    profile = study.PROFILES["tiny"]
    overrides = [study.model_overrides(m, profile, ["data.root=/x"], []) for m in study.select("2d")]
    assert all(o == overrides[0] for o in overrides)  # the same data, seed, schedule and evaluation
    assert "train.eval_every=1" in overrides[0] and "schedule.epochs=1" in overrides[0]
    assert (
        study.availability("configs/bev/no_such_model.py", [])
        == "configs/bev/no_such_model.py does not exist yet"
    )
    assert study.availability("configs/detr2d/deformable_detr.py", overrides[0]) is None


def test_a_run_folder_of_other_settings_is_never_reused(tmp_path: Path) -> None:
    (tmp_path / SPEC).write_text(json.dumps({"name": "a", "overrides": ["x=1"]}))
    assert reusable_result(tmp_path, {"name": "a", "overrides": ["x=1"]}) is None
    with pytest.raises(SystemExit, match="run of other settings"):
        reusable_result(tmp_path, {"name": "a", "overrides": ["x=2"]})


def _runs_table(report: str) -> dict[str, str]:
    rows = [line.split(" | ") for line in report.split("## Runs")[1].split("\n\n")[1].splitlines()[2:]]
    return {row[1]: row[3] for row in rows}


@pytest.mark.slow
def test_tiny_study_resumes_after_a_kill(tmp_path: Path) -> None:
    """Two models per group (that exist today): killed while the second model trains, the rerun reuses the
    first run and trains the rest; the report has every table and plot."""
    out = tmp_path / "study"
    models = "deformable_detr_single_scale,deformable_detr,detr3d,bevformer"
    command = [sys.executable, "tools/study.py", "--budget", "tiny", "--models", models, "--out", str(out),
               "--data", str(tmp_path / "data")]  # fmt: skip
    first, second = out / "2d" / "deformable_detr_single_scale", out / "2d" / "deformable_detr"
    process = subprocess.Popen(
        command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 900
    while not (second / "train.log").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert process.poll() is None, "the study ended before its second model started"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (first / RESULT).is_file()
    assert not (second / RESULT).exists() and not (out / "report.md").exists()
    finished_at = (first / RESULT).stat().st_mtime_ns

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (first / RESULT).stat().st_mtime_ns == finished_at
    report = (out / "report.md").read_text()
    assert _runs_table(report) == {
        "deformable_detr_single_scale": "reused",
        "deformable_detr": "trained",
        "detr3d": "trained",
        "bevformer": "trained",
    }
    for name in ("deformable_detr", "bevformer"):
        result = json.loads((out / ("2d" if name != "bevformer" else "bev") / name / RESULT).read_text())
        assert result["params"] > 0 and result["peak_rss_mb"] > 0 and result["train_time_s"] > 0
        assert set(result["latency_ms"]) == {"eager", "fast"}
        assert {"AP", "APs", "APm", "APl"} <= set(result["metrics"]) or {"NDS", "mAVE"} <= set(
            result["metrics"]
        )
    for png in ("study_2d_ap.png", "study_bev_metrics.png", "study_latency.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert "the highest NDS: " in report and "the highest final COCO AP: " in report  # a tiny run may tie
