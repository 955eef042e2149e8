"""End to end on tiny synthetic data: exact resume, 2-process torchrun training with gathered
evaluation, tools/test.py on an official-format checkpoint, predictions drawn."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from configs import load_config
from datasets.coco_evaluation import COCO_METRIC_NAMES
from datasets.synthetic_coco import SyntheticCocoSpec, generate_synthetic_coco
from detr2d.runtime.evaluate import run_predict, run_test
from detr2d.runtime.fit import fit
from detr2d.task import CocoDetectionTask

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "detr2d" / "demo.py"
NUM_VAL = 4


def tiny_overrides(root: Path) -> list[str]:
    """The demo config shrunk to seconds: 64-px images, a 64-wide one-layer transformer, 5 queries."""
    return [
        f"data.root={root}",
        "data.num_workers=0",
        "model.embed_dims=64",
        "model.encoder_layers=1",
        "model.decoder_layers=2",
        "model.num_queries=5",
        "model.ffn_dims=64",
        "model.dropout=0.1",  # exercises the RNG state on resume
        "augment.scales=[48,64]",
        "augment.max_size=80",
        "augment.eval_size=64",
        "train.batch_size=2",
        "train.eval_batch_size=2",
        "train.progress=False",
        "train.deterministic=True",
        "schedule.lr_drop=1",
    ]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticCocoSpec(num_train=4, num_val=NUM_VAL, image_size=64, max_objects=2, seed=11)
    return generate_synthetic_coco(tmp_path_factory.mktemp("tiny") / "data", spec, log=lambda _: None)


def _cli(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launcher + args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_resume_equals_uninterrupted_run(tiny_root: Path, tmp_path: Path) -> None:
    config = load_config(DEMO, [*tiny_overrides(tiny_root), "schedule.epochs=2", "train.eval_every=0"])
    fit(CocoDetectionTask(config), tmp_path / "full")
    stopped = {**config, "schedule": {**config["schedule"], "epochs": 1}}
    fit(CocoDetectionTask(stopped), tmp_path / "part")
    with pytest.raises(FileExistsError, match="--resume"):
        fit(CocoDetectionTask(config), tmp_path / "part")  # never overwrites an earlier run
    fit(CocoDetectionTask(config), tmp_path / "part", resume=tmp_path / "part" / "checkpoint.pth")

    full = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=False)
    resumed = torch.load(tmp_path / "part" / "checkpoint.pth", weights_only=False)
    assert full["epoch"] == resumed["epoch"] == 1
    assert full["model"].keys() == resumed["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(full["optimizer"]["state"].values(), resumed["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert full["lr_scheduler"] == resumed["lr_scheduler"]
    assert full["optimizer"]["param_groups"][0]["lr"] == pytest.approx(config["optim"]["lr"] * 0.01)
    log = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "train" in r] == [0, 1]


def test_torchrun_two_processes_train_and_gather(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    overrides = [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=1"]
    _cli(["tools/train.py", str(DEMO), "--out", str(out), *overrides], nproc=2)
    (record,) = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "train" in r]
    assert record["val_samples"] == NUM_VAL  # each process evaluated 2 images; rank 0 scored all 4
    assert set(record["val"]) == set(COCO_METRIC_NAMES)
    assert record["train"]["loss"] > 0
    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    assert len(checkpoint["rng"]) == 2 and not any(k.startswith("module.") for k in checkpoint["model"])

    proc = _cli(
        ["tools/test.py", str(DEMO), str(out / "checkpoint.pth"), "--out", str(out / "eval"), *overrides],
        nproc=2,
    )
    assert proc.stdout.count("Average Precision") == 6 and proc.stdout.count("Average Recall") == 6
    detections = json.loads((out / "eval" / "detections.json").read_text())
    val_ids = {
        i["id"]
        for i in json.loads((tiny_root / "annotations" / "instances_val2017.json").read_text())["images"]
    }
    assert {d["image_id"] for d in detections} == val_ids  # both ranks' shards gathered


def test_tools_test_on_official_format_checkpoint(tiny_root: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(tiny_root)
    model = CocoDetectionTask(load_config(DEMO, overrides)).build_model()
    official = {"model": model.state_dict(), "args": argparse.Namespace(lr=2e-4), "epoch": 49}
    torch.save(official, tmp_path / "official.pth")
    proc = _cli(
        [
            "tools/test.py",
            str(DEMO),
            str(tmp_path / "official.pth"),
            "--out",
            str(tmp_path / "eval"),
            *overrides,
        ]
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(" Average")]
    assert len(lines) == 12
    assert lines[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics) == list(COCO_METRIC_NAMES)
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert detections and set(detections[0]) == {"image_id", "category_id", "bbox", "score"}


def test_predict_draws_images_and_writes_json(tiny_root: Path, tmp_path: Path) -> None:
    config = load_config(DEMO, tiny_overrides(tiny_root))
    task = CocoDetectionTask(config)
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    records, errors = run_predict(
        task, tmp_path / "weights.pth", [tiny_root / "val2017"], tmp_path / "pred", 0.0, limit=2
    )
    assert errors == []
    assert len(records) == 2
    for record in records:
        assert Path(record["output"]).is_file() and Path(record["output"]).suffix == ".png"
        assert all(d["category"] in ("circle", "square", "triangle", "cross") for d in record["detections"])
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text()) == records


def test_format_only_writes_a_test_dev_submission(tiny_root: Path, tmp_path: Path) -> None:
    """An image-info file (images and categories, no annotations), as COCO test-dev ships it."""
    info = json.loads((tiny_root / "annotations" / "instances_val2017.json").read_text())
    image_info = {"images": info["images"], "categories": info["categories"]}
    (tiny_root / "annotations" / "image_info_test-dev.json").write_text(json.dumps(image_info))
    overrides = [*tiny_overrides(tiny_root), "data.val_ann_file=annotations/image_info_test-dev.json"]
    task = CocoDetectionTask(load_config(DEMO, overrides))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    result = run_test(task, tmp_path / "weights.pth", tmp_path / "submission", format_only=True)
    assert result.metrics == {} and "not scored" in result.table
    with contextlib.redirect_stdout(io.StringIO()):
        submitted = COCO(str(tiny_root / "annotations" / "image_info_test-dev.json")).loadRes(
            str(tmp_path / "submission" / "detections.json")
        )
    assert {a["image_id"] for a in submitted.dataset["annotations"]} <= {i["id"] for i in info["images"]}
    assert len(submitted.dataset["annotations"]) == 4 * 5 * 4  # per image: 5 queries x the 4 categories
    with pytest.raises(ValueError, match="has no annotations .*--format-only"):
        run_test(task, tmp_path / "weights.pth")


def _with_category_ids(root: Path, target: Path, new_ids: dict[int, int]) -> Path:
    """A copy of the tiny dataset whose category ids are replaced (e.g. by large, sparse ones)."""
    shutil.copytree(root, target)
    for split in ("train2017", "val2017"):
        path = target / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        for category in data["categories"]:
            category["id"] = new_ids[category["id"]]
        for annotation in data["annotations"]:
            annotation["category_id"] = new_ids[annotation["category_id"]]
        path.write_text(json.dumps(data))
    return target


def test_custom_category_ids_train_with_contiguous_labels(tiny_root: Path, tmp_path: Path) -> None:
    root = _with_category_ids(tiny_root, tmp_path / "custom", {1: 100, 2: 205, 3: 310, 4: 4000})
    overrides = [
        *tiny_overrides(root),
        "schedule.epochs=1",
        "train.eval_every=1",
        "data.contiguous_labels=true",
    ]
    with pytest.raises(
        ValueError, match=r"1 categories that a model with num_classes=3 cannot output: \[\(4000"
    ):
        fit(CocoDetectionTask(load_config(DEMO, [*overrides, "model.num_classes=3"])), tmp_path / "too_few")
    assert not (tmp_path / "too_few" / "checkpoint.pth").exists()
    config = load_config(DEMO, [*overrides, "model.num_classes=4"])
    fit(CocoDetectionTask(config), tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert checkpoint["class_names"] == {0: "circle", 1: "square", 2: "triangle", 3: "cross"}
    run_test(CocoDetectionTask(config), tmp_path / "run" / "checkpoint.pth", tmp_path / "eval")
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= {100, 205, 310, 4000} and detections


def test_init_from_a_91_class_checkpoint_fine_tunes_a_5_class_model(
    tiny_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [*tiny_overrides(tiny_root), "schedule.epochs=1", "train.eval_every=0"]
    published_like = CocoDetectionTask(load_config(DEMO, [*overrides, "model.num_classes=91"])).build_model()
    torch.save({"model": published_like.state_dict(), "epoch": 49}, tmp_path / "official.pth")
    proc = _cli(
        [
            "tools/train.py",
            str(DEMO),
            "--out",
            str(tmp_path / "ft"),
            "--init-from",
            str(tmp_path / "official.pth"),
            *overrides,
        ]
    )
    assert "(class head: 91 -> 5 classes), 0 missing (kept), 0 unexpected (ignored)" in proc.stderr
    reinitialized = next(line for line in proc.stderr.splitlines() if "re-initialized:" in line)
    assert sorted(reinitialized.split(": ")[1].split(", ")) == sorted(
        key for key in published_like.state_dict() if "class_embed" in key
    )
    checkpoint = torch.load(tmp_path / "ft" / "checkpoint.pth", weights_only=True)
    assert checkpoint["model"]["class_embed.0.weight"].shape[0] == 5
