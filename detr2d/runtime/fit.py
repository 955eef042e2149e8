"""The one training loop: build a task's model, data and loss from a config, train epoch by epoch with
the lr stepped every iteration, evaluate when due, checkpoint atomically, resume exactly."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .checkpoint import (
    capture_rng_state,
    read_training_checkpoint,
    restore_rng_of_rank,
    save_training_checkpoint,
)
from .data import build_train_loader, set_epoch
from .distributed import DistInfo, all_gather_object, barrier, init_distributed, reduce_mean, seed_everything
from .evaluate import evaluate
from .io import atomic_write_json, remove_stale_temporaries
from .logs import MetricsLog, plural, setup_logging
from .losses import Criterion, is_last_layer
from .optim import build_lr_scheduler, build_optimizer, resume_lr_scheduler
from .precision import autocast, check_amp, grad_scaler
from .run_dir import locked_run_dir
from .task import Task

logger = logging.getLogger(__name__)

LATEST = "checkpoint.pth"
VAL_DIR = "val"


@contextlib.contextmanager
def start_run(
    config: dict[str, Any], out_dir: str | Path, resume: str | Path | None
) -> Iterator[tuple[DistInfo, Path]]:
    """Join the process group, lock ``out_dir`` for this run (:func:`.run_dir.locked_run_dir`, released
    when the block ends) and prepare it (``config.json``, ``train.log``).

    A fresh run refuses to start where a ``checkpoint.pth`` exists, so an earlier run is never
    overwritten; temporary files of an interrupted checkpoint write are removed; the total batch size
    must split evenly over the processes.

    Raises:
        RunFolderBusy: another run holds ``out_dir`` (its pid, host and start time named).
    """
    info = init_distributed()
    out_dir = Path(out_dir)
    setup_logging(None, info.is_main)
    with locked_run_dir(out_dir, info.is_main):
        if resume is None and (out_dir / LATEST).exists():
            raise FileExistsError(
                f"{out_dir / LATEST} exists: pass --resume {out_dir / LATEST} to continue it, "
                "or choose another --out"
            )
        if info.is_main:
            remove_stale_temporaries(out_dir)
            atomic_write_json(out_dir / "config.json", config, indent=2)
        barrier()
        setup_logging(out_dir / "train.log", info.is_main)
        batch_size = config["train"]["batch_size"]
        if batch_size % info.world_size:
            processes = plural(info.world_size, "process", "processes")
            raise ValueError(f"train.batch_size {batch_size} is not divisible by {processes}")
        yield info, out_dir


def evaluation_due(eval_every: int, epoch: int, epochs: int) -> bool:
    """Whether to evaluate after ``epoch`` (0-based): every ``eval_every`` epochs and after the last one;
    never when ``eval_every`` is 0."""
    return eval_every > 0 and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)


@dataclass
class TrainState:
    """What an epoch changes and a checkpoint keeps."""

    model: nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None

    def checkpoint(self, epoch: int, rng: list[dict[str, Any]], config: dict[str, Any], task: Task) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "epoch": epoch,
            "rng": rng,
            "config": config,
            "task": task.name,
            "class_names": task.class_names(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state


def train_one_epoch(
    task: Task,
    model: nn.Module,
    criterion: Criterion,
    loader: DataLoader,
    state: TrainState,
    device: torch.device,
    epoch: int,
    config: dict[str, Any],
    metrics_log: MetricsLog,
    progress: bool = False,
) -> dict[str, float]:
    """One pass over ``loader``: ``criterion(model(*inputs), targets)``, weighted total, backward (scaled
    with fp16), gradient clipping at ``optim.clip_max_norm`` (when > 0), optimizer and lr step.

    Every ``train.log_every`` iterations a ``{"iter": ...}`` record (the last layer's loss terms, loss,
    lr, grad norm, speed, peak memory, ETA of the run) goes to the metrics log.

    Returns:
        Averages over the epoch (and over processes): ``loss``, the last decoder layer's terms and
        statistics, ``grad_norm``; plus ``lr`` (first group, last iteration), ``<unit>_per_s`` (this
        process) and ``time_s``.

    Raises:
        FloatingPointError: the loss is not finite; the message names the non-finite terms (nothing is
            written: the last checkpoint stays the last good one).
    """
    model.train()
    criterion.train()
    train_cfg = config["train"]
    epochs, log_every = config["schedule"]["epochs"], train_cfg["log_every"]
    clip = config["optim"]["clip_max_norm"]
    sums: dict[str, float] = defaultdict(float)
    seen, start = 0, time.perf_counter()
    steps = len(loader)
    bar = tqdm(
        loader,
        desc=f"epoch {epoch} ({epoch + 1}/{epochs})",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=2.0,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}]{postfix}",
    )
    lr = state.optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(bar, start=1):
        inputs, targets = task.split_batch(batch, device)
        with autocast(device, train_cfg["amp"]):
            losses = criterion(model(*inputs), targets)
        loss = criterion.weighted_total(losses)
        if not math.isfinite(loss.item()):
            bad = sorted(k for k, v in losses.items() if not torch.isfinite(v).all())
            terms = {k: round(v.item(), 4) for k, v in losses.items()}
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch}, iteration {step}: non-finite terms {bad} "
                f"(all terms: {terms}); training stopped, the last checkpoint is kept"
            )
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.unscale_(state.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
        lr = state.optimizer.param_groups[0]["lr"]
        if state.scaler is not None:
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            state.optimizer.step()
        state.lr_scheduler.step()

        current = {"loss": loss.item(), "grad_norm": grad_norm.item()}
        current.update({k: v.item() for k, v in losses.items() if is_last_layer(k)})
        for key, value in current.items():
            sums[key] += value
        seen += task.data.batch_size(batch)
        elapsed = time.perf_counter() - start
        epoch_eta_s = elapsed / step * (steps - step)
        eta_s = epoch_eta_s + elapsed / step * (epochs - epoch - 1) * steps
        bar.set_postfix_str(
            f"loss {sums['loss'] / step:.4f}, lr {lr:.2e} [epoch eta {_clock(epoch_eta_s)}] "
            f"[run eta {_clock(eta_s)}]",
            refresh=False,
        )
        if log_every > 0 and (step % log_every == 0 or step == steps):
            record = {
                "iter": epoch * steps + step,
                "epoch": epoch,
                **current,
                "lr": lr,
                f"{task.data.unit}_per_s": seen / elapsed,
                "peak_memory_mb": _peak_memory_mb(device),
                "eta_s": round(eta_s, 1),
            }
            metrics_log.write(record, record["iter"], "train_iter")
    stats = reduce_mean({k: v / max(steps, 1) for k, v in sums.items()}, device)
    elapsed = time.perf_counter() - start
    return {**stats, "lr": lr, f"{task.data.unit}_per_s": seen / elapsed, "time_s": elapsed}


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}"


def _peak_memory_mb(device: torch.device) -> float:
    """Peak allocated memory on a CUDA device, else the process's peak resident set (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _schedule_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        key: (saved.get(key), current.get(key))
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    }


def fit(
    task: Task,
    out_dir: str | Path,
    resume: str | Path | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``task.config`` in this process (one of ``torchrun``'s, or alone), writing into ``out_dir``.

    Every epoch: train, evaluate on the val split when due (``train.eval_every``; the evaluator's files
    go to ``out_dir/val``), write ``checkpoint.pth`` atomically (and keep ``checkpoint{epoch:04}.pth``
    every ``train.keep_every`` epochs), append the epoch to ``log.jsonl``. ``resume`` continues a
    training checkpoint exactly (model, optimizer, lr schedule, epoch, every process's RNG); changed
    schedule settings (``epochs``, ``lr_drop``, cosine length, ...) take effect from the resumed
    iteration and are logged. ``init_from`` starts a fresh run from a checkpoint's matching weights
    (fine-tuning; see the task's ``init_from``).

    ``out_dir`` also receives ``config.json`` and ``train.log``; a fresh run refuses to start where a
    ``checkpoint.pth`` exists; one run at a time writes there (``out_dir/.lock``, see
    :mod:`.run_dir`); ``log.jsonl`` tells redone iterations apart (see :class:`.logs.MetricsLog`).

    Returns:
        ``{"epoch": last completed epoch, "val": last evaluation summary or {}}``.
    """
    if resume is not None and init_from is not None:
        raise ValueError("--resume continues a run, --init-from starts a new one: pass only one")
    with start_run(task.config, out_dir, resume) as (info, out_dir):
        return _train(task, info, out_dir, resume, init_from)


def _train(
    task: Task, info: DistInfo, out_dir: Path, resume: str | Path | None, init_from: str | Path | None
) -> dict[str, Any]:
    """:func:`fit` in a prepared, locked ``out_dir``."""
    config = task.config
    train_cfg, schedule = config["train"], config["schedule"]
    check_amp(train_cfg["amp"])
    torch.use_deterministic_algorithms(train_cfg["deterministic"], warn_only=True)

    seed_everything(train_cfg["seed"])  # same initial weights on every process, whatever their number
    # the configured backbone weights start a fresh run; a resumed run or init_from brings its own weights
    model = task.build_model(pretrained=resume is None and init_from is None).to(info.device)
    if init_from is not None:
        logger.info("initialized from %s:\n%s", init_from, task.init_from(model, init_from))
    criterion = task.build_criterion().to(info.device)
    seed_everything(train_cfg["seed"] + info.rank)
    model_ddp = DistributedDataParallel(model) if info.world_size > 1 else model

    train_set, val_set = task.data.build_dataset("train"), task.data.build_dataset("val")
    train_loader = build_train_loader(
        train_set,
        train_cfg["batch_size"] // info.world_size,
        config["data"]["num_workers"],
        info.rank,
        info.world_size,
        train_cfg["seed"],
        collate_fn=task.data.collate,
    )
    val_loader = task.data.eval_loader(val_set, info.rank, info.world_size)
    optimizer = build_optimizer(model, config["optim"])
    state = TrainState(
        model,
        optimizer,
        build_lr_scheduler(optimizer, schedule, len(train_loader)),
        grad_scaler(info.device, train_cfg["amp"]),
    )

    start_epoch = 0
    if resume is not None:
        checkpoint = read_training_checkpoint(resume)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        resume_lr_scheduler(state.lr_scheduler, checkpoint["lr_scheduler"], schedule, len(train_loader))
        if state.scaler is not None and "scaler" in checkpoint:
            state.scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_of_rank(checkpoint, resume, info.rank, info.world_size)
        start_epoch = int(checkpoint["epoch"]) + 1
        changed = _schedule_changes(checkpoint.get("config", {}).get("schedule", {}), schedule)
        if changed:
            logger.warning("resumed with changed schedule settings (saved -> now): %s", changed)
        logger.info("resumed from %s at epoch %d", resume, start_epoch)
    task.data.check_labels(train_set, training=True)
    task.data.check_labels(val_set, training=False)
    unit = task.data.unit.removesuffix("s")  # "images" -> "image"
    logger.info(
        "training %s (%s): %s / %s, %s on %s, %d trainable parameters",
        config["model"]["name"],
        task.name,
        plural(len(train_set), f"train {unit}"),
        plural(len(val_set), f"val {unit}"),
        plural(info.world_size, "process", "processes"),
        info.device,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )

    metrics_log = MetricsLog(
        out_dir, info.is_main, train_cfg["tensorboard"], start_epoch, start_epoch * len(train_loader), resume
    )
    summary: dict[str, float] = {}
    try:
        for epoch in range(start_epoch, schedule["epochs"]):
            set_epoch(train_loader, epoch)
            stats = train_one_epoch(
                task,
                model_ddp,
                criterion,
                train_loader,
                state,
                info.device,
                epoch,
                config,
                metrics_log,
                progress=train_cfg["progress"] and info.is_main,
            )
            record: dict[str, Any] = {"epoch": epoch, "train": stats}
            skipped = getattr(train_set, "num_skipped_images", 0)
            if skipped:
                record["skipped_images"] = skipped
                logger.warning("%s skipped so far (data.on_bad_image=skip)", plural(skipped, "bad image"))
            if evaluation_due(train_cfg["eval_every"], epoch, schedule["epochs"]):
                result = evaluate(
                    task, model, val_loader, info.device, info.is_main, train_cfg["amp"], out_dir / VAL_DIR
                )
                summary = record["val"] = result.summary
                record["val_samples"] = result.num_samples
                if result.num_skipped:
                    record["val_skipped"] = result.num_skipped
                logger.info("epoch %d evaluation:\n%s", epoch, result.table)
            rng = all_gather_object(capture_rng_state())
            if info.is_main:
                checkpoint = state.checkpoint(epoch, rng, config, task)
                keep = train_cfg["keep_every"]
                save_training_checkpoint(out_dir / LATEST, checkpoint)
                if keep > 0 and (epoch + 1) % keep == 0:
                    save_training_checkpoint(out_dir / f"checkpoint{epoch:04}.pth", checkpoint)
                metrics_log.write(record, epoch, "epoch")
            terms = ", ".join(f"{k} {v:.4f}" for k, v in stats.items() if k.startswith("loss_"))
            logger.info(
                "epoch %d: loss %.4f (%s), lr %.2e, %.1f s, %.2f %s/s%s",
                epoch,
                stats["loss"],
                terms,
                stats["lr"],
                stats["time_s"],
                stats[f"{task.data.unit}_per_s"],
                task.data.unit,
                "".join(f", {k} {v:.4f}" for k, v in record.get("val", {}).items()),
            )
    finally:
        metrics_log.close()
    barrier()
    return {"epoch": schedule["epochs"] - 1, "val": summary}
