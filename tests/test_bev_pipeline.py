"""The tools on a BEV config end to end, on a tiny generated nuScenes dataset: tools/train.py (a couple of
iterations with history frames, in-training evaluation), tools/test.py (sequential test, official
nuScenes evaluation, metrics.json) and tools/predict.py (BEV and camera pictures); exact resume; and
(slow) the same under torchrun with two processes."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bev_helpers import (  # noqa: F401 (fixtures: one_thread autouse, tiny_root)
    kill_training_in_epoch,
    one_thread,
    tiny_demo_overrides,
    tiny_root,
)

from bev.task import NuScenesDetectionTask
from configs import load_config
from detr2d.runtime.fit import fit

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "bev" / "demo.py"


def run_tool(name: str, args: list[str]) -> None:
    """Run ``tools/<name>`` in this process as if from the command line."""
    argv = sys.argv
    sys.argv = [str(REPO / "tools" / name), *args]
    try:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    finally:
        sys.argv = argv


def test_demo_config_trains_with_history_and_tests_without(tiny_root: Path) -> None:  # noqa: F811
    config = load_config(DEMO, tiny_demo_overrides(tiny_root))
    assert config["task"] == "nuscenes_detection" and config["data"]["num_history"] >= 1
    task = NuScenesDetectionTask(config)
    train_item = task.data.build_dataset("train")[0]
    val_item = task.data.build_dataset("val")[0]
    assert train_item["img"].shape[:2] == (1 + config["data"]["num_history"], 6)
    assert val_item["img"].shape[:2] == (1, 6)  # the tester carries the previous BEV instead


def test_tools_train_test_predict(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    overrides = tiny_demo_overrides(tiny_root)
    run = tmp_path / "run"
    run_tool(
        "train.py",
        [
            str(DEMO),
            "--out",
            str(run),
            *overrides,
            "schedule.epochs=1",
            "schedule.warmup_iters=1",
            "train.eval_every=1",
        ],
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (record,) = [r for r in log if "train" in r]
    assert log[0]["iter"] >= 1 and {"loss", "lr", "grad_norm", "eta_s", "samples_per_s"} <= set(log[0])
    assert math.isfinite(record["train"]["loss"]) and record["train"]["loss"] > 0
    assert set(record["val"]) == {"mAP", "NDS"} and record["val_samples"] == 6
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "rng"} <= set(checkpoint)

    capsys.readouterr()
    run_tool("test.py", [str(DEMO), str(run / "checkpoint.pth"), "--out", str(tmp_path / "eval"), *overrides])
    printed = capsys.readouterr().out
    assert "NDS:" in printed and "mAP:" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE"} <= set(metrics)
    assert metrics["split"] == "synthetic_val" and metrics["num_samples"] == 6
    results = json.loads((tmp_path / "eval" / "results_nusc.json").read_text())["results"]
    val_tokens = {
        s["token"]
        for s in json.loads((tiny_root / "infos" / "nuscenes_infos_synthetic_val.json").read_text())[
            "samples"
        ]
    }
    assert set(results) == val_tokens

    infos = tiny_root / "infos" / "nuscenes_infos_synthetic_val.json"
    predict_out = tmp_path / "predict"
    run_tool(
        "predict.py",
        [
            str(DEMO),
            str(run / "checkpoint.pth"),
            str(infos),
            "--out",
            str(predict_out),
            "--limit",
            "2",
            "--score-threshold",
            "0",
            *overrides,
        ],
    )
    records = json.loads((predict_out / "predictions.json").read_text())
    assert len(records) == 2 and all(len(r["boxes"]) == len(r["scores"]) > 0 for r in records)
    for r in records:
        assert Path(r["bev"]).is_file() and Path(r["cameras"]).is_file()


def test_resume_equals_uninterrupted_run(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run killed during epoch 1 and resumed from its checkpoint ends exactly where an uninterrupted
    one does: model, optimizer, per-iteration schedule and RNG states all carry over."""
    overrides = [
        *tiny_demo_overrides(tiny_root),
        "schedule.epochs=2",
        "schedule.warmup_iters=3",
        "train.deterministic=True",
    ]
    config = load_config(DEMO, overrides)
    fit(NuScenesDetectionTask(config), tmp_path / "full")

    kill_training_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        fit(NuScenesDetectionTask(config), tmp_path / "part")
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="--resume"):
        fit(NuScenesDetectionTask(config), tmp_path / "part")  # never overwrites an earlier run
    fit(NuScenesDetectionTask(config), tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pth")

    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    resumed = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=True)
    assert full["epoch"] == resumed["epoch"] == 1
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["lr_scheduler"] == resumed["lr_scheduler"]
    log = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "train" in r] == [0, 1]


@pytest.mark.slow
def test_torchrun_two_processes_train_and_test(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """DDP training on gloo, then the sequential test with each process taking whole val scenes."""
    overrides = [
        *tiny_demo_overrides(tiny_root),
        "schedule.epochs=1",
        "schedule.warmup_iters=1",
        "train.eval_every=1",
        "train.batch_size=2",  # the total over the processes: one sample each
    ]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    for args in (
        ["tools/train.py", str(DEMO), "--out", str(out), *overrides],
        ["tools/test.py", str(DEMO), str(out / "checkpoint.pth"), "--out", str(out / "eval"), *overrides],
    ):
        proc = subprocess.run(launcher + args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (record,) = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "train" in r]
    assert record["val_samples"] == 6  # two val scenes, one per process, gathered on rank 0
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and not any(k.startswith("module.") for k in checkpoint["model"])
    results = json.loads((out / "eval" / "results_nusc.json").read_text())["results"]
    assert len(results) == 6


def test_init_from_a_coco_checkpoint_loads_the_image_backbone(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """COCO as the first stage: the BEV demo's ResNet-18 starts from the 2D demo model's."""
    from detr2d.task import CocoDetectionTask

    coco = CocoDetectionTask(load_config(REPO / "configs" / "detr2d" / "demo.py")).build_model()
    torch.save({"model": coco.state_dict()}, tmp_path / "coco.pth")
    task = NuScenesDetectionTask(load_config(DEMO, tiny_demo_overrides(tiny_root)))
    model = task.build_model()
    report = task.init_from(model, tmp_path / "coco.pth")
    assert "under 'backbone.0.body.'" in report
    coco_state = coco.state_dict()
    for key, value in model.backbone.body.state_dict().items():  # stem, layer1, layer2 (layer2 is returned)
        assert torch.equal(value, coco_state[f"backbone.0.body.{key}"]), key
    fit(task, tmp_path / "run", init_from=tmp_path / "coco.pth")  # and a run starts from it
    assert (tmp_path / "run" / "checkpoint.pth").is_file()
