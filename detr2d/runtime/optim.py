"""AdamW with named parameter groups, and the learning-rate schedules (step, warmup + cosine), stepped per
iteration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def _matches(name: str, keywords: Sequence[str]) -> bool:
    return any(keyword in name for keyword in keywords)


def param_groups(
    model: nn.Module,
    lr: float,
    lr_backbone: float,
    lr_linear_proj_mult: float,
    backbone_names: Sequence[str] = ("backbone.0",),
    linear_proj_names: Sequence[str] = ("sampling_offsets", "reference_points"),
) -> list[dict[str, Any]]:
    """Split the trainable parameters into three groups by name (substring match).

    - parameters matching ``linear_proj_names``: ``lr × lr_linear_proj_mult``;
    - parameters matching ``backbone_names`` (and not the above): ``lr_backbone``;
    - all others: ``lr``.

    Frozen parameters (``requires_grad`` False) are left out. Empty groups are dropped.
    """
    groups: dict[str, list[nn.Parameter]] = {"main": [], "backbone": [], "linear_proj": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if _matches(name, linear_proj_names):
            groups["linear_proj"].append(param)
        elif _matches(name, backbone_names):
            groups["backbone"].append(param)
        else:
            groups["main"].append(param)
    rates = {"main": lr, "backbone": lr_backbone, "linear_proj": lr * lr_linear_proj_mult}
    return [{"params": params, "lr": rates[key], "name": key} for key, params in groups.items() if params]


def build_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, from a config's ``optim`` section.

    The fused implementation (one kernel over all parameters; ~25 % of a small model's CPU step) is
    used when every parameter is a floating-point tensor on the CPU or a CUDA device.
    """
    groups = param_groups(
        model,
        lr=optim["lr"],
        lr_backbone=optim["lr_backbone"],
        lr_linear_proj_mult=optim["lr_linear_proj_mult"],
        backbone_names=optim["backbone_names"],
        linear_proj_names=optim["linear_proj_names"],
    )
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]
    )
    return torch.optim.AdamW(groups, lr=optim["lr"], weight_decay=optim["weight_decay"], fused=fused)


class StepFactor:
    """lr factor ``gamma ** (epoch // drop_every)`` at iteration ``step`` (Deformable DETR's ``StepLR``,
    evaluated per iteration so that every schedule steps the same way)."""

    def __init__(self, steps_per_epoch: int, drop_every: int, gamma: float) -> None:
        if steps_per_epoch < 1 or drop_every < 1:
            raise ValueError(
                f"steps_per_epoch and lr_drop must be >= 1, got {steps_per_epoch} and {drop_every}"
            )
        self.steps_per_epoch = steps_per_epoch
        self.drop_every = drop_every
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.steps_per_epoch // self.drop_every)


class WarmupCosine:
    """lr factor at iteration ``step`` of ``total_steps``: BEVFormer's schedule.

    Cosine from 1 down to ``min_lr_ratio`` over ``total_steps``, times a linear warmup that rises from
    ``warmup_ratio`` to 1 over the first ``warmup_iters`` iterations (mmcv's ``CosineAnnealing`` with
    ``warmup="linear"``, the warmup per iteration). With ``steps_per_epoch`` the cosine advances once per
    epoch, as mmcv's default ``by_epoch=True`` (BEVFormer's configs); without, every iteration.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_iters: int,
        warmup_ratio: float,
        min_lr_ratio: float,
        steps_per_epoch: int | None = None,
    ) -> None:
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
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step: int) -> float:
        if self.steps_per_epoch is None:
            progress = min(step / self.total_steps, 1.0)
        else:  # mmcv's by_epoch: constant within an epoch
            progress = min(step // self.steps_per_epoch * self.steps_per_epoch / self.total_steps, 1.0)
        cosine = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if step >= self.warmup_iters:
            return cosine
        return cosine * (1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio))


SCHEDULE_POLICIES = ("step", "warmup_cosine")


def schedule_factor(schedule: dict[str, Any], steps_per_epoch: int) -> StepFactor | WarmupCosine:
    """The lr factor of a config's ``schedule`` section, as a function of the iteration.

    ``policy="step"``: ``epochs``, ``lr_drop``, ``lr_gamma``; ``policy="warmup_cosine"``: ``epochs``,
    ``warmup_iters``, ``warmup_ratio``, ``min_lr_ratio``, ``cosine_by_epoch`` (optional, default False).
    """
    policy = schedule.get("policy")
    if policy == "step":
        return StepFactor(steps_per_epoch, schedule["lr_drop"], schedule["lr_gamma"])
    if policy == "warmup_cosine":
        return WarmupCosine(
            schedule["epochs"] * steps_per_epoch,
            schedule["warmup_iters"],
            schedule["warmup_ratio"],
            schedule["min_lr_ratio"],
            steps_per_epoch if schedule.get("cosine_by_epoch", False) else None,
        )
    raise ValueError(f"schedule.policy must be one of {SCHEDULE_POLICIES}, got {policy!r}")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: dict[str, Any], steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's schedule (:func:`schedule_factor`) over ``optimizer``; call ``step()`` after every
    optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(schedule, steps_per_epoch))


def resume_lr_scheduler(
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: dict[str, Any],
    schedule: dict[str, Any],
    steps_per_epoch: int,
) -> None:
    """Continue a saved schedule under the settings of ``schedule`` (which may differ from the saved run's).

    The iteration count and base rates come from ``state``; the lr factor is rebuilt from ``schedule``,
    and every group's lr is set to ``base_lr * factor(iteration)``. With unchanged settings this is the
    saved run's exact lr (the original's ``--override_resumed_lr_drop``, always on).
    """
    lr_scheduler.load_state_dict(state)
    factor = schedule_factor(schedule, steps_per_epoch)
    lr_scheduler.lr_lambdas = [factor] * len(lr_scheduler.optimizer.param_groups)
    step = lr_scheduler.last_epoch
    for group, base_lr in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor(step)
    lr_scheduler._last_lr = [group["lr"] for group in lr_scheduler.optimizer.param_groups]
