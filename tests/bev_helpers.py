"""Shared pieces of the BEV tests: a hand-built camera ring, a tiny backbone and tiny models."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from bev import DetectionLoss3D, MultiViewDetector3D, bev_model_config, build_bev_model
from datasets.nuscenes import SyntheticSpec, create_nuscenes_infos, generate_synthetic_nuscenes
from datasets.nuscenes.synthetic import VERSION


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run a test on one intra-op thread (restored afterwards).

    The tiny models are made of thousands of small ops; on a shared, oversubscribed 2-core machine
    every op's thread hand-off costs milliseconds (measured: 8 training steps 52 s on 2 threads,
    0.9 s on 1). Import this fixture into a test module to make it autouse there.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four scenes (two train, two val) of three samples, 96 x 54 images, with infos (a generated
    nuScenes root for the tools' end-to-end tests)."""
    spec = SyntheticSpec(num_scenes=4, samples_per_scene=3, image_size=(96, 54), objects_per_class=1, seed=3)
    root = generate_synthetic_nuscenes(tmp_path_factory.mktemp("bev_tiny") / "nuscenes", spec)
    create_nuscenes_infos(root, VERSION, root / "infos")
    return root


IMG_SHAPE = (32, 64)  # (H, W) of the tiny test images
PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def pinhole_intrinsics(img_shape: tuple[int, int], hfov_deg: float = 90.0) -> torch.Tensor:
    """(3, 3) intrinsics of a camera with horizontal field of view ``hfov_deg`` centred on the image."""
    height, width = img_shape
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return torch.tensor(
        [[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def camera_lidar2img(
    yaw: float, position: tuple[float, float, float], img_shape: tuple[int, int]
) -> torch.Tensor:
    """(4, 4) lidar2img of a level camera at ``position`` (lidar frame) looking along ``yaw`` (rad).

    Camera axes: x right, y down, z forward; in the lidar frame forward = (cos, sin, 0), right =
    (sin, -cos, 0), down = (0, 0, -1).
    """
    forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0], dtype=torch.float64)
    right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0], dtype=torch.float64)
    down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    rotation = torch.stack([right, down, forward])  # camera <- lidar
    lidar2cam = torch.eye(4, dtype=torch.float64)
    lidar2cam[:3, :3] = rotation
    lidar2cam[:3, 3] = -rotation @ torch.tensor(position, dtype=torch.float64)
    intrinsics = torch.eye(4, dtype=torch.float64)
    intrinsics[:3, :3] = pinhole_intrinsics(img_shape)
    return intrinsics @ lidar2cam


def ring_lidar2img(
    img_shape: tuple[int, int] = IMG_SHAPE,
    num_cams: int = 6,
    yaw_offset: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """(Ncam, 4, 4) float32 lidar2img of ``num_cams`` cameras evenly spread around the ego at 1.6 m."""
    mats = [
        camera_lidar2img(yaw_offset + 2 * math.pi * i / num_cams, (shift[0], shift[1], 1.6), img_shape)
        for i in range(num_cams)
    ]
    return torch.stack(mats).float()


class TinyBackbone(nn.Module):
    """Strided convs standing in for the ResNet: levels at strides 8 and 16 (or only 16)."""

    def __init__(self, num_levels: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.level1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.level2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())
        self.num_channels = [16, 24][2 - num_levels :]
        self.strides = [8, 16][2 - num_levels :]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.level1(self.stem(x))
        return [first, self.level2(first)][2 - len(self.num_channels) :]


TINY_SIZES = {
    "embed_dims": 32,
    "ffn_dims": 64,
    "num_heads": 4,
    "bev_h": 8,
    "bev_w": 8,
    "encoder_layers": 2,
    "sca_points": 4,
    "decoder_layers": 2,
    "num_queries": 20,
    "max_num": 50,
}


def published_tiny_model(
    name: str, backend: str | None = "reference", **overrides: object
) -> MultiViewDetector3D:
    """Published variant ``name`` (its temporal math, quirks and head) at the tiny sizes, seeded.

    Its backbone is :class:`TinyBackbone` with one level for the one-level variants (tiny, small) and
    two levels (four FPN outputs) for base and DETR3D.
    """
    torch.manual_seed(0)
    levels = bev_model_config(name).num_levels
    settings = {
        **TINY_SIZES,
        "backbone_module": TinyBackbone(1 if levels == 1 else 2),
        "num_levels": levels,
        "backend": backend,
    }
    settings.update(overrides)
    return build_bev_model(name, **settings)


def can_bus_vector(x: float, y: float, yaw_degrees: float) -> torch.Tensor:
    """(18,) absolute CAN-bus vector (``datasets.nuscenes.can_bus`` layout) at global (x, y) and yaw."""
    vector = torch.zeros(18)
    vector[0], vector[1] = x, y
    half = math.radians(yaw_degrees) / 2
    vector[3], vector[6] = math.cos(half), math.sin(half)  # rotation wxyz about z
    vector[13] = 5.0  # some velocity
    vector[16], vector[17] = math.radians(yaw_degrees % 360), yaw_degrees % 360
    return vector


def tiny_model(
    head: str = "bev", backend: str | None = "reference", **overrides: object
) -> MultiViewDetector3D:
    """A few-thousand-parameter detector on :class:`TinyBackbone` (eval-mode ready, seeded)."""
    torch.manual_seed(0)
    settings = {
        **TINY_SIZES,
        "head": head,
        "backbone_module": TinyBackbone(),
        "num_levels": 2,
        "backend": backend,
    }
    settings.update(overrides)
    return build_bev_model("bev_demo", **settings)


def translation_motion(dx: float, dy: float = 0.0, yaw: float = 0.0) -> torch.Tensor:
    """(4, 4) prev-lidar -> current-lidar transform: rotate by ``yaw`` about z, then translate (dx, dy)."""
    motion = torch.eye(4)
    motion[0, 0] = motion[1, 1] = math.cos(yaw)
    motion[0, 1], motion[1, 0] = -math.sin(yaw), math.sin(yaw)
    motion[0, 3], motion[1, 3] = dx, dy
    return motion


def criterion_of(model: MultiViewDetector3D) -> DetectionLoss3D:
    """The published loss for ``model``'s classes and decoder layers."""
    return DetectionLoss3D(model.head.num_classes, len(model.head.layers))


def loss_terms(model: MultiViewDetector3D, batch: dict) -> dict[str, torch.Tensor]:
    """Raw loss terms of ``model`` on ``batch``: ``criterion(model(batch), targets)``."""
    targets = {key: batch[key] for key in ("gt_boxes", "gt_labels")}
    return criterion_of(model)(model(batch), targets)


def tiny_demo_overrides(root: Path) -> list[str]:
    """configs/bev/demo.py shrunk to seconds on generated data under ``root``: 64 x 36 images, C = 32,
    BEV 8 x 8, one encoder layer, 10 queries."""
    return [
        f"data.root={root}",
        f"data.infos_dir={root / 'infos'}",
        "data.image_size=[64,36]",
        "model.embed_dims=32",
        "model.ffn_dims=32",
        "model.bev_h=8",
        "model.bev_w=8",
        "model.encoder_layers=1",
        "model.decoder_layers=2",
        "model.num_queries=10",
        "train.progress=False",
    ]


def kill_training_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the runtime's epoch ``epoch`` raise KeyboardInterrupt (a run killed mid-training);
    ``monkeypatch.undo()`` lifts it."""
    from detr2d.runtime import fit as fit_module

    train_one_epoch = fit_module.train_one_epoch

    def killed(*args, **kwargs):
        if args[6] == epoch:  # the epoch argument
            raise KeyboardInterrupt
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", killed)
