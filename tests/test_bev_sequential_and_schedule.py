"""BEV runtime pieces without data: the sequential tester's temporal history, scene sharding, the schedule,
the published configs."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bev import ego_motion_between
from bev.sequential import SceneShardSampler, iterate_sequential, scene_runs
from configs import load_config
from detr2d.runtime.optim import WarmupCosine, build_lr_scheduler, build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bev"


class RecordingDetector(nn.Module):
    """Stands in for the detector: its BEV is the frame's image value, and it records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        self.can_bus: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []

    def forward_test(
        self,
        img,
        lidar2img,
        prev_bev=None,
        ego_motion=None,
        prev_exists=None,
        can_bus=None,
        prev_can_bus=None,
    ):
        self.calls.append((prev_bev, ego_motion))
        self.can_bus.append((can_bus, prev_can_bus))
        detections = {"boxes": torch.zeros(0, 9), "scores": torch.zeros(0), "labels": torch.zeros(0).long()}
        return [detections], img.mean().reshape(1, 1, 1)


def _frame(token: str, scene: str, value: float, x: float) -> dict:
    pose = torch.eye(4, dtype=torch.float64)[None]
    pose[0, 0, 3] = x
    return {
        "img": torch.full((1, 1, 6, 3, 2, 2), value),
        "lidar2img": torch.eye(4).expand(1, 1, 6, 4, 4),
        "lidar2global": pose,
        "can_bus": torch.full((1, 1, 18), value),
        "sample_token": [token],
        "scene_token": [scene],
    }


def test_previous_bev_is_carried_within_a_scene_and_reset_at_a_scene_change():
    frames = [
        _frame("a0", "A", 1.0, 0.0),
        _frame("a1", "A", 2.0, 3.0),
        _frame("a2", "A", 3.0, 7.0),
        _frame("b0", "B", 4.0, 100.0),
        _frame("b1", "B", 5.0, 101.0),
        _frame("b3", "B", 6.0, 103.0),  # b2 is missing: a gap in the chain also drops the history
    ]
    prev = {"a0": "", "a1": "a0", "a2": "a1", "b0": "", "b1": "b0", "b3": "b2"}
    model = RecordingDetector()
    detections = {
        b["sample_token"][0]: d for b, d in iterate_sequential(model, frames, prev, torch.device("cpu"))
    }
    assert list(detections) == ["a0", "a1", "a2", "b0", "b1", "b3"]
    given = [None if bev is None else bev.item() for bev, _ in model.calls]
    assert given == [None, 1.0, 2.0, None, 4.0, None]
    for index in (1, 2, 4):
        expected = ego_motion_between(
            frames[index - 1]["lidar2global"], frames[index]["lidar2global"]
        ).float()
        torch.testing.assert_close(model.calls[index][1], expected)
    assert model.calls[1][1][0, 0, 3].item() == pytest.approx(-3.0)  # the previous frame is 3 m behind
    assert all(motion is None for bev, motion in model.calls if bev is None)
    given_can_bus = [(c[0, 0].item(), None if p is None else p[0, 0].item()) for c, p in model.can_bus]
    assert given_can_bus == [(1.0, None), (2.0, 1.0), (3.0, 2.0), (4.0, None), (5.0, 4.0), (6.0, None)]


def test_scene_shards_cover_every_sample_once_with_whole_scenes_in_order():
    scenes = ["a", "a", "a", "b", "b", "c", "d", "d"]
    assert scene_runs(scenes) == [[0, 1, 2], [3, 4], [5], [6, 7]]
    shards = [list(SceneShardSampler(scenes, rank, 2)) for rank in range(2)]
    assert shards == [[0, 1, 2, 5], [3, 4, 6, 7]]
    assert sorted(i for shard in shards for i in shard) == list(range(len(scenes)))


def test_warmup_cosine_schedule():
    factor = WarmupCosine(total_steps=100, warmup_iters=10, warmup_ratio=1 / 3, min_lr_ratio=1e-3)
    cosine = [1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * s / 100)) for s in range(101)]
    assert factor(0) == pytest.approx(1 / 3)
    assert factor(5) == pytest.approx(cosine[5] * (1 - 0.5 * (2 / 3)))
    assert factor(10) == pytest.approx(cosine[10])
    assert factor(100) == pytest.approx(1e-3) and factor(150) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="warmup_ratio"):
        WarmupCosine(10, 1, 0.0, 1e-3)


def test_schedule_state_resumes_from_a_weights_only_checkpoint():
    schedule = {
        "policy": "warmup_cosine",
        "epochs": 2,
        "warmup_iters": 3,
        "warmup_ratio": 0.5,
        "min_lr_ratio": 0.01,
    }
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, schedule, steps_per_epoch=5)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    fresh_optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = build_lr_scheduler(fresh_optimizer, schedule, steps_per_epoch=5)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(3):
        for opt, sched in ((optimizer, scheduler), (fresh_optimizer, fresh)):
            opt.step()
            sched.step()
        assert fresh.get_last_lr() == scheduler.get_last_lr()


@pytest.mark.parametrize(
    ("name", "variant", "image_size", "num_history"),
    [
        ("bevformer_base", "bevformer_base", [1600, 900], 3),
        ("bevformer_small", "bevformer_small", [1280, 720], 2),
        ("bevformer_tiny", "bevformer_tiny", [800, 450], 2),
        ("detr3d", "detr3d", [1600, 900], 0),
    ],
)
def test_published_configs_follow_the_recipe(name, variant, image_size, num_history):
    config = load_config(CONFIGS / f"{name}.py")
    assert config["task"] == "nuscenes_detection" and config["model"]["name"] == variant
    assert config["data"]["image_size"] == image_size and config["data"]["num_history"] == num_history
    optim, schedule = config["optim"], config["schedule"]
    assert (optim["lr"], optim["weight_decay"], optim["lr_backbone"], optim["clip_max_norm"]) == (
        2e-4,
        0.01,
        2e-5,
        35.0,
    )
    assert (schedule["epochs"], schedule["warmup_iters"], schedule["min_lr_ratio"]) == (24, 500, 1e-3)
    assert schedule["warmup_ratio"] == pytest.approx(1 / 3) and config["train"]["batch_size"] == 8
    model = nn.Module()
    model.backbone, model.neck = nn.Linear(1, 1), nn.Linear(1, 1)
    groups = {g["name"]: g["lr"] for g in build_optimizer(model, optim).param_groups}
    assert groups == {"backbone": 2e-5, "main": 2e-4}
