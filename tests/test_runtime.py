"""The task-neutral runtime: resumed schedules, run start-up, results integrity, the shared command line,
and the guard against another top-level ``datasets`` package."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes_fixtures import dataset, ground_truth_detections, nusc, val_infos  # noqa: F401 (fixtures)
from test_coco_train import DEMO, tiny_overrides, tiny_root  # noqa: F401 (fixture)
from torch import nn

from bev.nuscenes import metrics_table
from configs import load_config
from datasets.coco_evaluation import COCO_METRIC_NAMES
from datasets.nuscenes.evaluation import evaluate_nuscenes
from datasets.nuscenes.synthetic import VERSION as NUSCENES_VERSION
from detr2d.coco import CocoData, CocoEvaluator, coco_class_names
from detr2d.layers.box_ops import box_cxcywh_to_xyxy
from detr2d.runtime.cli import split_overrides
from detr2d.runtime.evaluate import check_finite, run_predict, run_test
from detr2d.runtime.fit import fit
from detr2d.runtime.logs import plural
from detr2d.runtime.optim import build_lr_scheduler, resume_lr_scheduler
from detr2d.runtime.task import Task
from detr2d.runtime.tasks import TASKS, task_class
from detr2d.task import CocoDetectionTask

REPO = Path(__file__).resolve().parents[1]


def _stepped(schedule: dict, steps: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, schedule, steps_per_epoch)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler


def test_resumed_schedule_takes_the_new_settings() -> None:
    """The original's --override_resumed_lr_drop, always on: iteration count from the checkpoint,
    factor from the current config; unchanged settings give the saved lr exactly."""
    old = {"policy": "step", "lr_drop": 10, "lr_gamma": 0.1}
    saved = _stepped(old, steps=12, steps_per_epoch=4)  # epoch 3 of a drop every 10: lr 1.0
    assert saved.get_last_lr() == [1.0]
    for schedule, expected in ((old, 1.0), ({**old, "lr_drop": 2}, 0.1), ({**old, "lr_drop": 1}, 0.001)):
        fresh = _stepped(schedule, steps=0, steps_per_epoch=4)
        resume_lr_scheduler(fresh, saved.state_dict(), schedule, steps_per_epoch=4)
        assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        assert fresh.last_epoch == 12
    cosine = {
        "policy": "warmup_cosine",
        "epochs": 2,
        "warmup_iters": 1,
        "warmup_ratio": 0.5,
        "min_lr_ratio": 0.0,
    }
    fresh = _stepped({**cosine, "epochs": 4}, steps=0, steps_per_epoch=4)
    resume_lr_scheduler(fresh, _stepped(cosine, 4, 4).state_dict(), {**cosine, "epochs": 4}, 4)
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(
        0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4))).item()
    )


def test_resume_with_a_longer_schedule_logs_the_change_and_trains_on(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    overrides = [*tiny_overrides(tiny_root), "train.eval_every=0"]
    fit(
        CocoDetectionTask(load_config(DEMO, [*overrides, "schedule.epochs=1", "schedule.lr_drop=5"])),
        tmp_path,
    )
    longer = load_config(DEMO, [*overrides, "schedule.epochs=2", "schedule.lr_drop=1"])
    with caplog.at_level(logging.WARNING):
        fit(CocoDetectionTask(longer), tmp_path, resume=tmp_path / "checkpoint.pth")
    assert "changed schedule settings" in caplog.text and "'lr_drop': (5, 1)" in caplog.text
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(longer["optim"]["lr"] * 0.01)
    assert checkpoint["task"] == "coco_detection" and set(checkpoint["class_names"].values()) == {
        "circle",
        "square",
        "triangle",
        "cross",
    }


def test_start_up_removes_stale_temporaries_of_a_killed_write(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    stale = tmp_path / f".checkpoint.pth.tmp.{int(dead.stdout)}"
    stale.write_bytes(b"\0" * 4096)
    config = load_config(DEMO, [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=0"])
    fit(CocoDetectionTask(config), tmp_path)
    assert not stale.exists() and (tmp_path / "checkpoint.pth").is_file()


def test_non_finite_loss_stops_training_naming_the_term(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(DEMO, [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=0"])
    task = CocoDetectionTask(config)
    criterion = task.build_criterion()
    forward = criterion.forward

    def poisoned(outputs, targets):
        losses = forward(outputs, targets)
        return {**losses, "d0.loss_giou": losses["d0.loss_giou"] * float("nan")}

    monkeypatch.setattr(criterion, "forward", poisoned)
    monkeypatch.setattr(task, "build_criterion", lambda: criterion)
    with pytest.raises(FloatingPointError, match=r"non-finite terms \['d0.loss_giou'\]"):
        fit(task, tmp_path)
    assert not (tmp_path / "checkpoint.pth").exists()


def test_non_finite_detections_never_reach_the_evaluator(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    task = CocoDetectionTask(load_config(DEMO, tiny_overrides(tiny_root)))
    model = task.build_model()
    nan_state = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    torch.save({"model": nan_state}, tmp_path / "nan.pth")
    with pytest.raises(
        FloatingPointError, match=r"non-finite outputs: 50 of 50 detections in 2 of 2 sample\(s\) of a batch"
    ):
        run_test(task, tmp_path / "nan.pth", tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    detections = [{"boxes": torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, float("inf")]]), "scores": torch.ones(2)}]
    with pytest.raises(FloatingPointError, match="1 of 2 detections in 1 of 1"):
        check_finite(detections, "a test")
    check_finite([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}], "empty")


def test_predict_items_split_into_existing_paths_and_overrides(tmp_path: Path) -> None:
    image = tmp_path / "a=b.jpg"  # an existing file is an input even if it looks like key=value
    image.write_bytes(b"")
    paths, overrides = split_overrides(
        [str(tmp_path), str(image), "data.root=/x", "train.amp=bf16", "missing.jpg"]
    )
    assert paths == [str(tmp_path), str(image), "missing.jpg"]
    assert overrides == ["data.root=/x", "train.amp=bf16"]


def _tool(args: list[str], env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env or dict(os.environ),
    )


def test_print_config_shows_the_resolved_config_and_overrides_are_type_checked() -> None:
    proc = _tool(["tools/train.py", str(DEMO), "train.batch_size=6", "--print-config"])
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert config["train"]["batch_size"] == 6 and config["task"] == "coco_detection"
    proc = _tool(
        ["tools/predict.py", str(DEMO), "ckpt.pth", "images/", "model.num_queries=7", "--print-config"]
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["model"]["num_queries"] == 7
    proc = _tool(["tools/test.py", str(DEMO), "ckpt.pth", "train.batch_size=8.5", "--print-config"])
    assert proc.returncode != 0 and "'train.batch_size=8.5': the key holds a int, got 8.5" in proc.stderr


def test_another_datasets_package_is_reported_or_avoided(tmp_path: Path) -> None:
    """A stand-in for Hugging Face's ``datasets`` earlier on sys.path: the tools still find ours (they put
    the repository first); a library import of a task fails with a message that says what to do."""
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "__init__.py").write_text("HUGGING_FACE = True\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = _tool([str(REPO / "tools" / "train.py"), str(DEMO), "--print-config"], env=env, cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["task"] == "coco_detection", proc.stderr
    code = "from detr2d.runtime.tasks import task_class; task_class('coco_detection')"
    proc = _tool(["-c", code], env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "not deformbev's datasets package" in proc.stderr and "PYTHONPATH=" in proc.stderr


def test_task_table_names_task_classes() -> None:
    for name in TASKS:
        assert task_class(name).name == name
    with pytest.raises(ValueError, match="unknown task 'lidar'"):
        task_class("lidar")
    with pytest.raises(ValueError, match="is not a detr2d.runtime.task.Task subclass"):
        task_class("detr2d.builder:ModelConfig")


class OracleTask(Task):
    """A third detector on COCO in a few lines: its model side only (it detects the ground truth boxes)."""

    name = "oracle"
    data_class = CocoData
    evaluator_class = CocoEvaluator

    def build_model(self, pretrained: bool = False) -> nn.Module:
        return nn.Linear(1, 1)

    def num_classes(self) -> int:
        return self.config["model"]["num_classes"]

    def class_names(self) -> dict[int, str]:
        return coco_class_names(self.config, self.num_classes())

    def infer(self, model, loader, device, amp=None):
        for batch in loader:
            detections = []
            for target in batch[2]:
                height, width = target["orig_size"].tolist()
                boxes = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([width, height, width, height])
                scores = torch.ones(len(boxes))
                detections.append({"boxes": boxes, "scores": scores, "labels": target["labels"]})
            yield batch, detections


def test_a_third_task_reuses_the_coco_data_side_and_evaluator(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    task = OracleTask(load_config(DEMO, tiny_overrides(tiny_root)))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    result = run_test(task, tmp_path / "weights.pth", tmp_path / "eval")
    assert set(result.metrics) == set(COCO_METRIC_NAMES)
    assert result.num_samples == 4 and not result.num_skipped
    assert result.metrics["AP"] == pytest.approx(1.0) and result.summary == result.metrics
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert sorted({d["image_id"] for d in detections}) == sorted(task.data.build_dataset("val").ids)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == result.metrics


def test_predict_skips_an_undecodable_file_and_still_writes_the_json(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    good = sorted((tiny_root / "val2017").iterdir())[0]
    (images / "a_good.jpg").write_bytes(good.read_bytes())
    (images / "b_bad.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # truncated JPEG
    task = CocoDetectionTask(load_config(DEMO, tiny_overrides(tiny_root)))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    records, errors = run_predict(task, tmp_path / "weights.pth", [images], tmp_path / "out", 0.0)
    assert [Path(r["file"]).name for r in records] == ["a_good.jpg"]
    assert len(errors) == 1 and errors[0]["input"].endswith("b_bad.jpg") and "truncated" in errors[0]["error"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == records + errors
    proc = _tool(
        [
            "tools/predict.py",
            str(DEMO),
            str(tmp_path / "weights.pth"),
            str(images),
            "--out",
            str(tmp_path / "cli"),
            *tiny_overrides(tiny_root),
        ]
    )
    assert proc.returncode == 1 and "1 input could not be read" in proc.stderr
    assert len(json.loads((tmp_path / "cli" / "predictions.json").read_text())) == 2


def test_categories_the_model_cannot_output_are_reported_before_evaluation(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = CocoDetectionTask(load_config(DEMO, [*tiny_overrides(tiny_root), "model.num_classes=3"]))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    with caplog.at_level(logging.WARNING):
        run_test(task, tmp_path / "weights.pth")
    assert "has 2 categories that a model with num_classes=3 cannot output" in caplog.text
    assert "(3, 'triangle'), (4, 'cross')" in caplog.text


def test_cosine_by_epoch_is_constant_within_an_epoch_and_warms_up_per_iteration() -> None:
    schedule = {
        "policy": "warmup_cosine",
        "epochs": 4,
        "warmup_iters": 3,
        "warmup_ratio": 0.5,
        "min_lr_ratio": 0.0,
    }
    by_epoch = _stepped({**schedule, "cosine_by_epoch": True}, 0, 5).lr_lambdas[0]
    per_iteration = _stepped(schedule, 0, 5).lr_lambdas[0]
    assert [by_epoch(s) for s in (3, 4)] == [1.0, 1.0]  # epoch 0 after the warmup: cosine(0)
    assert (
        by_epoch(5) == by_epoch(9) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))
    )
    assert by_epoch(1) == pytest.approx(1.0 * (1 - (1 - 1 / 3) * 0.5))  # linear warmup per iteration
    assert per_iteration(5) != per_iteration(9)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_with_amp_runs_on_the_cpu(tiny_root: Path, tmp_path: Path, amp: str) -> None:  # noqa: F811
    config = load_config(
        DEMO, [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=1", f"train.amp={amp}"]
    )
    result = fit(CocoDetectionTask(config), tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert ("scaler" in checkpoint) == (amp == "fp16")  # fp16 trains with loss scaling, saved for resume
    assert set(result["val"]) >= {"AP"}


def test_fast_inference_mode_scores_like_eager(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    task = CocoDetectionTask(load_config(DEMO, tiny_overrides(tiny_root)))
    torch.manual_seed(0)
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    eager = run_test(task, tmp_path / "weights.pth", tmp_path / "eager")
    fast = run_test(task, tmp_path / "weights.pth", tmp_path / "fast", mode="fast")
    assert fast.metrics == pytest.approx(eager.metrics, abs=1e-3)
    eager_dets = json.loads((tmp_path / "eager" / "detections.json").read_text())
    fast_dets = json.loads((tmp_path / "fast" / "detections.json").read_text())
    assert len(fast_dets) == len(eager_dets)
    assert max(abs(a["score"] - b["score"]) for a, b in zip(eager_dets, fast_dets, strict=True)) < 1e-4
    with pytest.raises(ValueError, match="inference mode must be one of"):
        run_test(task, tmp_path / "weights.pth", mode="turbo")


def test_metrics_log_writes_tensorboard_events_when_the_extra_is_installed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from detr2d.runtime.logs import MetricsLog

    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        installed = False
    else:
        installed = True
    with caplog.at_level(logging.INFO):
        log = MetricsLog(tmp_path, is_main=True)
    log.write({"iter": 5, "loss": 1.5, "lr": 1e-4, "val": {"AP": 0.5}}, 5, "train_iter")
    log.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {
        "iter": 5,
        "loss": 1.5,
        "lr": 1e-4,
        "val": {"AP": 0.5},
        "attempt": 0,
    }
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    if installed:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
        accumulator.Reload()
        assert set(accumulator.Tags()["scalars"]) == {
            "train_iter/iter",
            "train_iter/loss",
            "train_iter/lr",
            "train_iter/val/AP",
        }
        assert accumulator.Scalars("train_iter/val/AP")[0].value == pytest.approx(0.5)
    else:
        assert not events and "tensorboard not installed" in caplog.text
    assert MetricsLog(tmp_path / "other", is_main=False).path is None  # other ranks write nothing


def test_the_published_config_refuses_frozen_batch_norm_without_weights() -> None:
    config = load_config(REPO / "configs" / "detr2d" / "deformable_detr.py", ["model.pretrained=none"])
    with pytest.raises(
        ValueError, match=r"frozen batch norm .* but no pretrained weights.*model.backbone_norm=bn"
    ):
        CocoDetectionTask(config).build_model(pretrained=True)
    CocoDetectionTask(config).build_model()  # test / predict: the checkpoint brings the weights


def test_the_progress_bar_labels_its_two_etas(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    config = load_config(
        DEMO, [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=0", "train.progress=True"]
    )
    fit(CocoDetectionTask(config), tmp_path)
    (line,) = [line for line in capsys.readouterr().err.split("\r") if "epoch 0 (1/1): 100%" in line]
    line = line.splitlines()[0].strip()
    bar = r"epoch 0 \(1/1\): 100%\|█+\| 2/2 \[\d\d:\d\d, +[\d.]+(s/it|it/s)\]"
    etas = r"\[epoch eta 0:00:00\] \[run eta 0:00:00\]"
    assert re.fullmatch(rf"{bar}, loss [\d.]+, lr [\d.e+-]+ {etas}", line), line
    assert "<" not in line  # tqdm's unlabelled remaining time is gone


def test_counts_in_log_lines_agree_with_their_nouns(
    tiny_root: Path,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert [plural(n, "detection") for n in (0, 1, 2)] == ["0 detections", "1 detection", "2 detections"]
    assert (
        plural(1, "process", "processes") == "1 process"
        and plural(3, "process", "processes") == "3 processes"
    )
    task = CocoDetectionTask(load_config(DEMO, tiny_overrides(tiny_root)))
    image = np.zeros((32, 32, 3), np.uint8)
    batch = (None, None, [{"file": tmp_path / "a.jpg", "stem": "a", "image": image}])
    one = {
        "boxes": torch.tensor([[1.0, 1, 9, 9]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    with caplog.at_level(logging.INFO, logger="detr2d.coco"):
        (entry,) = task.data.draw(batch, [one], 0.5, tmp_path)
    assert len(entry["detections"]) == 1
    assert f"a.jpg: 1 detection -> {tmp_path / 'a.png'}" in caplog.text


def test_the_bev_evaluation_summary_is_printed_once(
    dataset,  # noqa: F811
    nusc,  # noqa: F811
    val_infos,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """The devkit prints its own summary, and the tools print :func:`metrics_table`: only the latter."""
    detections = ground_truth_detections(val_infos)
    args = (detections, dataset.root, NUSCENES_VERSION, "mini_val", tmp_path)
    metrics = evaluate_nuscenes(*args, nusc=nusc)
    assert capsys.readouterr().out == ""
    assert metrics_table(metrics).count("NDS:") == 1
    evaluate_nuscenes(*args, nusc=nusc, verbose=True)
    assert capsys.readouterr().out.count("NDS:") == 1  # the devkit's, on request
