"""Shared fixtures of the nuScenes tests: one default synthetic dataset per test session.

pytest builds a separate fixture per module that imports a fixture, so the dataset itself is cached
here (``functools.cache``) and every module's fixtures reuse it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes

from datasets.nuscenes.constants import CLASS_NAMES
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.infos import create_nuscenes_infos, infos_path, load_infos
from datasets.nuscenes.synthetic import (
    NUSCENES_CAMERA_SWEEPS,
    VERSION,
    SyntheticSpec,
    generate_synthetic_nuscenes,
)

#: A small synthetic set with camera sweeps at the real 12 Hz: 2 scenes of 4 samples (1.5 s each).
SWEEPS_SPEC = SyntheticSpec(
    num_scenes=2,
    samples_per_scene=4,
    image_size=(320, 180),
    camera_sweeps=NUSCENES_CAMERA_SWEEPS,
    can_bus=False,
)


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    infos_dir: Path
    generation_seconds: float


@functools.cache
def generated_dataset() -> GeneratedDataset:
    """The default synthetic dataset and its infos for every split, written once into a temporary dir."""
    workdir = Path(tempfile.mkdtemp(prefix="deformbev_nuscenes_"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    start = time.perf_counter()
    root = generate_synthetic_nuscenes(workdir / "nuscenes")
    seconds = time.perf_counter() - start
    print(f"\n[nuscenes tests] generated the default synthetic dataset in {seconds:.1f} s")
    create_nuscenes_infos(root, VERSION, workdir / "infos")
    return GeneratedDataset(root, workdir / "infos", seconds)


@functools.cache
def generated_sweeps_dataset() -> GeneratedDataset:
    """:data:`SWEEPS_SPEC` and its infos for every split (sweeps kept), written once into a temporary dir."""
    workdir = Path(tempfile.mkdtemp(prefix="deformbev_nuscenes_sweeps_"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    start = time.perf_counter()
    root = generate_synthetic_nuscenes(workdir / "nuscenes", SWEEPS_SPEC)
    create_nuscenes_infos(root, VERSION, workdir / "infos")
    return GeneratedDataset(root, workdir / "infos", time.perf_counter() - start)


@pytest.fixture(scope="session")
def sweeps_dataset() -> GeneratedDataset:
    return generated_sweeps_dataset()


@functools.cache
def _database() -> NuScenes:
    return open_nuscenes(generated_dataset().root, VERSION)


@pytest.fixture(scope="session")
def dataset() -> GeneratedDataset:
    return generated_dataset()


@pytest.fixture(scope="session")
def nusc() -> NuScenes:
    return _database()


@pytest.fixture(scope="session")
def val_infos() -> dict:
    return load_infos(infos_path(generated_dataset().infos_dir, "mini_val"))


def ground_truth_detections(infos: dict, rng: np.random.Generator | None = None, noise: float = 0.0) -> dict:
    """Detections copied from the valid 10-class ground truth of ``infos``, optionally perturbed: centre xy,
    yaw and velocity get Gaussian noise of std ``noise`` (m, rad, m/s) and sizes a relative noise of std
    ``noise / 4``."""
    detections = {}
    for sample in infos["samples"]:
        gt = sample["gt"]
        keep = [i for i, name in enumerate(gt["names"]) if name in CLASS_NAMES and gt["valid_flag"][i]]
        boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 9)[keep]
        if noise > 0:
            assert rng is not None
            boxes[:, :2] += rng.normal(0.0, noise, (len(boxes), 2))
            boxes[:, 3:6] *= np.exp(rng.normal(0.0, noise / 4, (len(boxes), 3)))
            boxes[:, 6] += rng.normal(0.0, noise, len(boxes))
            boxes[:, 7:9] += rng.normal(0.0, noise, (len(boxes), 2))
        detections[sample["token"]] = {
            "boxes": boxes,
            "scores": np.ones(len(boxes)),
            "labels": np.array([CLASS_NAMES.index(gt["names"][i]) for i in keep], dtype=np.int64),
        }
    return detections
