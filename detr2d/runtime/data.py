"""Data loaders sharded over processes: shuffled for training, in order for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler


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


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    rank: int,
    world_size: int,
    seed: int,
    collate_fn: Callable[[list[Any]], Any],
) -> DataLoader:
    """Shuffled loader over this process's share (``DistributedSampler``; call ``set_epoch``).

    The loader has its own ``torch.Generator``, so creating an iterator never draws from the global
    RNG (which drives dropout and must resume exactly). ``collate_fn`` stacks a list of items.
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
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any],
    sampler: Sampler[int],
) -> DataLoader:
    """Loader over ``sampler``'s indices in order (e.g. this process's :class:`ShardSampler` share)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select epoch ``epoch``'s shuffling (sampler) and, where the dataset has one, augmentation stream."""
    loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
