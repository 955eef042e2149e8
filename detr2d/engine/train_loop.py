"""One training epoch: forward, weighted set-prediction loss, backward, gradient clipping, step."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .distributed import reduce_mean
from .evaluate import autocast

LOGGED_TERMS = ("loss_ce", "loss_bbox", "loss_giou", "class_error")


def targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target dict to ``device``."""
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    clip_max_norm: float = 0.0,
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``.

    The loss is ``criterion.weighted_total(losses)``. Gradients are clipped to L2 norm
    ``clip_max_norm`` (when > 0); with ``amp="fp16"`` a ``scaler`` scales the loss and unscales the
    gradients before clipping.

    Returns:
        Averages over the epoch (and over processes): ``loss``, the last decoder layer's raw terms
        (``loss_ce``, ``loss_bbox``, ``loss_giou``, ``class_error``), ``grad_norm``; plus ``lr`` (first
        group), ``images_per_s`` (this process) and ``time_s``.

    Raises:
        FloatingPointError: the loss is not finite (the message lists the loss terms).
    """
    model.train()
    criterion.train()
    sums: dict[str, float] = defaultdict(float)
    num_images, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, mininterval=2.0)
    for step, (images, mask, targets) in enumerate(bar, start=1):
        images, mask, targets = images.to(device), mask.to(device), targets_to(targets, device)
        with autocast(device, amp):
            outputs = model(images, mask)
            losses = criterion(outputs, targets)
        loss = criterion.weighted_total({k: v.float() for k, v in losses.items()})
        if not math.isfinite(loss.item()):
            terms = {k: round(v.item(), 4) for k, v in losses.items()}
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}: {terms}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        max_norm = clip_max_norm if clip_max_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        sums["loss"] += loss.item()
        sums["grad_norm"] += grad_norm.item()
        for key in LOGGED_TERMS:
            sums[key] += losses[key].item()
        num_images += images.shape[0]
        speed = num_images / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{sums['loss'] / step:.4f}", img_s=f"{speed:.1f}")
    steps = max(len(loader), 1)
    stats = reduce_mean({k: v / steps for k, v in sums.items()}, device)
    elapsed = time.perf_counter() - start
    return {
        **stats,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": num_images / elapsed,
        "time_s": elapsed,
    }
