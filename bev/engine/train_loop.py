"""One BEV training epoch: forward with history frames, weighted 3D set loss, backward, clip, step."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detr2d.engine.distributed import reduce_mean
from detr2d.engine.evaluate import autocast

#: Batch keys the model reads (``datasets.nuscenes.collate_nuscenes`` layout); the rest stays on the CPU.
MODEL_TENSOR_KEYS = ("img", "lidar2img", "ego_motion", "history_valid")
MODEL_LIST_KEYS = ("gt_boxes", "gt_labels")
LOGGED_TERMS = ("loss_cls", "loss_bbox")


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model's part of a collated nuScenes batch on ``device``: ``img`` (B, T, Ncam, 3, H, W),
    ``lidar2img`` (B, T, Ncam, 4, 4), ``ego_motion`` (B, T, 4, 4), ``history_valid`` (B, T), and the
    ``gt_boxes`` / ``gt_labels`` lists."""
    moved: dict[str, Any] = {key: batch[key].to(device) for key in MODEL_TENSOR_KEYS}
    moved.update({key: [t.to(device) for t in batch[key]] for key in MODEL_LIST_KEYS})
    return moved


def train_one_epoch_bev(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    clip_max_norm: float = 0.0,
    amp: str | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train for one pass over ``loader``, stepping ``lr_scheduler`` after every iteration.

    ``model(batch)`` (possibly DDP-wrapped) returns the unweighted loss terms; the loss is
    ``criterion.weighted_total(losses)`` (``criterion`` is the unwrapped model's ``criterion``).
    Gradients are clipped to L2 norm ``clip_max_norm`` when > 0.

    Returns:
        Averages over the epoch (and over processes): ``loss``, the last decoder layer's
        ``loss_cls`` / ``loss_bbox``, ``grad_norm``; plus ``lr`` (first group, at the end),
        ``samples_per_s`` (this process) and ``time_s``.

    Raises:
        FloatingPointError: the loss is not finite (the message lists the loss terms).
    """
    model.train()
    sums: dict[str, float] = defaultdict(float)
    num_samples, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, dynamic_ncols=True, mininterval=2.0)
    for step, batch in enumerate(bar, start=1):
        batch = batch_to(batch, device)
        with autocast(device, amp):
            losses = model(batch)
        loss = criterion.weighted_total({k: v.float() for k, v in losses.items()})
        if not math.isfinite(loss.item()):
            terms = {k: round(v.item(), 4) for k, v in losses.items()}
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step}: {terms}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = clip_max_norm if clip_max_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        lr_scheduler.step()
        sums["loss"] += loss.item()
        sums["grad_norm"] += grad_norm.item()
        for key in LOGGED_TERMS:
            sums[key] += losses[key].item()
        num_samples += batch["img"].shape[0]
        bar.set_postfix(loss=f"{sums['loss'] / step:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    steps = max(len(loader), 1)
    stats = reduce_mean({k: v / steps for k, v in sums.items()}, device)
    elapsed = time.perf_counter() - start
    return {
        **stats,
        "lr": optimizer.param_groups[0]["lr"],
        "samples_per_s": num_samples / elapsed,
        "time_s": elapsed,
    }
