"""nuScenes datasets and loaders of a BEV config: shuffled training batches with history frames, and
the per-scene, time-ordered stream the sequential tester needs (scenes sharded over processes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from datasets.nuscenes import NuScenesMultiViewDataset, collate_nuscenes
from datasets.nuscenes.infos import infos_path
from detr2d.engine.data import build_train_loader


def build_nuscenes_dataset(config: dict[str, Any], train: bool) -> NuScenesMultiViewDataset:
    """The config's train split with ``data.num_history`` history frames per sample, or its val split
    with none (the sequential tester carries the previous BEV instead).

    ``config["data"]``: ``root`` (nuScenes root), ``infos_dir`` (``nuscenes_infos_<split>.json`` from
    ``tools/create_data.py nuscenes``), ``train_split``, ``val_split``, ``image_size`` (W, H),
    ``num_history``.
    """
    data = config["data"]
    split = data["train_split"] if train else data["val_split"]
    return NuScenesMultiViewDataset(
        infos_path(data["infos_dir"], split),
        data_root=Path(data["root"]),
        image_size=tuple(data["image_size"]),
        num_history=data["num_history"] if train else 0,
    )


def build_bev_train_loader(
    dataset: NuScenesMultiViewDataset,
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    seed: int,
) -> DataLoader:
    """Shuffled batches of this process's share (see :func:`detr2d.engine.data.build_train_loader`)."""
    return build_train_loader(
        dataset, batch_size, num_workers, rank, world_size, seed, collate_fn=collate_nuscenes
    )


def prev_tokens(dataset: NuScenesMultiViewDataset) -> dict[str, str]:
    """Sample token -> its scene's previous sample token ("" at a scene start), from the infos."""
    return {sample["token"]: sample["prev"] for sample in dataset.samples}


def scene_runs(scene_tokens: Sequence[str]) -> list[list[int]]:
    """Indices grouped into runs of consecutive equal scene tokens, in order: ``["a", "a", "b"]`` ->
    ``[[0, 1], [2]]``."""
    runs: list[list[int]] = []
    for index, token in enumerate(scene_tokens):
        if runs and scene_tokens[runs[-1][-1]] == token:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class SceneShardSampler(Sampler[int]):
    """Whole scenes per process, each in dataset (time) order: scene runs ``rank, rank + world_size, ...``.

    Every sample is visited exactly once over all processes, and a process sees each of its scenes
    from the first frame to the last, so the previous BEV can be carried through it.

    Args:
        scene_tokens: the scene token of every dataset index, a scene's samples consecutive and in time
            order (as in an infos file).
    """

    def __init__(self, scene_tokens: Sequence[str], rank: int = 0, world_size: int = 1) -> None:
        self.indices = [i for run in scene_runs(scene_tokens)[rank::world_size] for i in run]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_sequential_loader(
    dataset: NuScenesMultiViewDataset, num_workers: int, rank: int, world_size: int
) -> DataLoader:
    """Batch-size-1 loader over this process's scenes in time order (:class:`SceneShardSampler`)."""
    scene_tokens = [sample["scene_token"] for sample in dataset.samples]
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=SceneShardSampler(scene_tokens, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate_nuscenes,
        generator=torch.Generator().manual_seed(0),
    )
