"""Runtime pieces (parameter groups, schedules, sharding, atomic checkpoints, RNG capture) and COCO
scoring and drawing."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from datasets.coco import load_coco_index
from datasets.coco_evaluation import COCO_METRIC_NAMES, coco_metrics
from datasets.synthetic_coco import SyntheticCocoSpec, generate_synthetic_coco
from detr2d.runtime.checkpoint import capture_rng_state, restore_rng_state
from detr2d.runtime.data import ShardSampler
from detr2d.runtime.io import atomic_save
from detr2d.runtime.optim import build_lr_scheduler, build_optimizer, param_groups
from detr2d.visualize import draw_detections

REPO = Path(__file__).resolve().parents[1]


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleList([nn.Linear(2, 2)])  # backbone.0.*
        self.sampling_offsets = nn.Linear(2, 2)
        self.reference_points = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_param_groups_follow_the_recipe() -> None:
    model = _Named()
    groups = {g["name"]: g for g in param_groups(model, lr=2e-4, lr_backbone=2e-5, lr_linear_proj_mult=0.1)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert groups["main"]["lr"] == 2e-4 and ids["main"] == {id(p) for p in model.head.parameters()}
    assert groups["backbone"]["lr"] == 2e-5 and ids["backbone"] == {
        id(p) for p in model.backbone.parameters()
    }
    assert groups["linear_proj"]["lr"] == pytest.approx(2e-5)
    assert ids["linear_proj"] == {
        id(p) for m in (model.sampling_offsets, model.reference_points) for p in m.parameters()
    }
    assert all(id(p) not in set().union(*ids.values()) for p in model.frozen.parameters())


def test_fused_adamw_equals_the_loop_implementation() -> None:
    """The fused AdamW that build_optimizer picks on the CPU takes the same steps as the for-loop one."""
    torch.manual_seed(0)
    model = _Named()
    reference = copy.deepcopy(model)
    optim = {"lr": 1e-2, "weight_decay": 1e-4, "lr_backbone": 1e-3, "lr_linear_proj_mult": 0.1}
    optim |= {"backbone_names": ["backbone.0"], "linear_proj_names": ["sampling_offsets", "reference_points"]}
    fused = build_optimizer(model, optim)
    loop_groups = param_groups(reference, 1e-2, 1e-3, 0.1)
    loop = torch.optim.AdamW(loop_groups, lr=1e-2, weight_decay=1e-4, foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(8, 2)
    for _ in range(5):
        for net, opt in ((model, fused), (reference, loop)):
            opt.zero_grad()
            sum(m(x).square().sum() for m in (net.backbone[0], net.sampling_offsets, net.head)).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_step_schedule_drops_lr() -> None:
    optimizer = torch.optim.AdamW(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = build_lr_scheduler(optimizer, {"policy": "step", "lr_drop": 2, "lr_gamma": 0.1}, 1)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


@pytest.mark.parametrize(("length", "world"), [(7, 2), (4, 2), (5, 3), (1, 2)])
def test_shards_cover_every_sample_once(length: int, world: int) -> None:
    shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))
    assert [len(ShardSampler(length, rank, world)) for rank in range(world)] == [len(s) for s in shards]


def test_atomic_save_keeps_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pth"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj, f) -> None:
        f.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # temporary file removed


def test_process_killed_while_saving_leaves_no_corrupt_checkpoint(tmp_path: Path) -> None:
    """SIGKILL after the new data are written but before the rename: the old checkpoint survives."""
    path = tmp_path / "checkpoint.pth"
    script = f"""
import os, signal, sys, torch
sys.path.insert(0, {str(REPO)!r})
from detr2d.runtime.io import atomic_save
atomic_save({{"epoch": 1, "w": torch.ones(1000)}}, {str(path)!r})
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
atomic_save({{"epoch": 2, "w": torch.zeros(100000)}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    checkpoint = torch.load(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["w"], torch.ones(1000))
    leftovers = [p for p in tmp_path.iterdir() if p.name != "checkpoint.pth"]
    assert all(p.name.startswith(".checkpoint.pth.tmp.") for p in leftovers)


def test_rng_state_roundtrip() -> None:
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002 (the global generator)
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


@pytest.fixture(scope="module")
def val_index(tmp_path_factory: pytest.TempPathFactory):
    spec = SyntheticCocoSpec(num_train=1, num_val=6, image_size=64, seed=5)
    root = generate_synthetic_coco(tmp_path_factory.mktemp("eval"), spec, log=lambda _: None)
    return load_coco_index(root / "annotations" / "instances_val2017.json")


def test_perfect_detections_score_one(val_index) -> None:
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in val_index.dataset["annotations"]
    ]
    metrics, table = coco_metrics(val_index, detections, sorted(val_index.imgs))
    assert list(metrics) == list(COCO_METRIC_NAMES)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)
    assert len(table.splitlines()) == 12
    assert table.splitlines()[0].startswith(
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
    )


def test_shifted_or_missing_detections_score_less(val_index) -> None:
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + 3, *a["bbox"][1:]],
            "score": 0.9,
        }
        for a in val_index.dataset["annotations"]
    ]
    metrics, _ = coco_metrics(val_index, detections, sorted(val_index.imgs))
    assert 0.0 < metrics["AP"] < 1.0
    metrics, table = coco_metrics(val_index, [], sorted(val_index.imgs))
    assert len(table.splitlines()) == 12 and metrics["AP"] <= 0


def test_draw_detections_marks_boxes() -> None:
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    drawn = draw_detections(image, [[5, 10, 30, 35]], [2], [0.87], {2: "square"}, min_side=40)
    assert drawn.shape == image.shape and not image.any()
    assert drawn[35, 15].any() and drawn[20, 5].any() and not drawn[38, 50].any()
    zoomed = draw_detections(image, [[5, 10, 30, 35]], [2], [0.87], {2: "square"}, min_side=100)
    assert zoomed.shape == (120, 180, 3)  # enlarged 3x so the caption is legible
    assert zoomed[105, 45].any() and not zoomed[114, 150].any()


def test_generator_cli_matches_library(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "datasets.synthetic_coco",
            str(tmp_path / "cli"),
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--image-size",
            "48",
            "--seed",
            "9",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    generate_synthetic_coco(
        tmp_path / "lib", SyntheticCocoSpec(num_train=2, num_val=1, image_size=48, seed=9), log=lambda _: None
    )
    for split in ("train2017", "val2017"):
        cli = json.loads((tmp_path / "cli" / "annotations" / f"instances_{split}.json").read_text())
        lib = json.loads((tmp_path / "lib" / "annotations" / f"instances_{split}.json").read_text())
        assert cli == lib
