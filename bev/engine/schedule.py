"""BEVFormer's learning-rate schedule: linear warmup, then cosine annealing, stepped every iteration."""

from __future__ import annotations

import math
from typing import Any

import torch


class WarmupCosine:
    """The lr factor at iteration ``step`` of ``total_steps`` (a picklable ``LambdaLR`` function).

    Cosine from 1 down to ``min_lr_ratio`` over ``total_steps``, times a linear warmup that rises from
    ``warmup_ratio`` to 1 over the first ``warmup_iters`` iterations (mmcv's ``CosineAnnealing`` with
    ``warmup="linear"``; here the cosine is per iteration, not per epoch).
    """

    def __init__(self, total_steps: int, warmup_iters: int, warmup_ratio: float, min_lr_ratio: float) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 < warmup_ratio <= 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                "warmup_ratio must be in (0, 1] and min_lr_ratio in [0, 1], "
                f"got {warmup_ratio} and {min_lr_ratio}"
            )
        self.total_steps = total_steps
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        progress = min(step / self.total_steps, 1.0)
        cosine = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if step >= self.warmup_iters:
            return cosine
        return cosine * (1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio))


def build_warmup_cosine(
    optimizer: torch.optim.Optimizer, schedule: dict[str, Any], steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule from a config's ``schedule`` section (``epochs``, ``warmup_iters``,
    ``warmup_ratio``, ``min_lr_ratio``); call ``step()`` after every optimizer step."""
    factor = WarmupCosine(
        schedule["epochs"] * steps_per_epoch,
        schedule["warmup_iters"],
        schedule["warmup_ratio"],
        schedule["min_lr_ratio"],
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
