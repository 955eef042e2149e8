"""Datasets and data loaders from a config, sharded over processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from datasets.coco import CocoDetection, build_coco_dataset
from datasets.collate import collate_detection
from datasets.transforms import build_transforms


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: every sample exactly once over all processes.

    Unlike ``DistributedSampler`` it never pads with repeated samples, so gathered evaluation results
    hold each image once.
    """

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def build_dataset(config: dict[str, Any], train: bool) -> CocoDetection:
    """The config's train split with the train augmentation, or its val split with the eval resize."""
    data, augment = config["data"], config["augment"]
    transforms = build_transforms(
        train,
        scales=augment["scales"],
        max_size=augment["max_size"],
        crop_resize_sizes=augment["crop_resize_sizes"],
        crop_size=tuple(augment["crop_size"]),
        flip_prob=augment["flip_prob"],
        eval_size=augment["eval_size"],
    )
    split = data["train_split"] if train else data["val_split"]
    return build_coco_dataset(data["root"], split, transforms, seed=config["train"]["seed"])


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] = collate_detection,
) -> DataLoader:
    """Shuffled loader over this process's share (``DistributedSampler``; call ``set_epoch``).

    The loader has its own ``torch.Generator``, so creating an iterator never draws from the global
    RNG (which drives dropout and must resume exactly). ``collate_fn`` stacks a list of items (the
    COCO detection collate by default).
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def build_eval_loader(
    dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int, rank: int, world_size: int
) -> DataLoader:
    """Sequential loader over this process's shard (:class:`ShardSampler`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(0),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select epoch ``epoch``'s shuffling (sampler) and augmentation stream (dataset)."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
