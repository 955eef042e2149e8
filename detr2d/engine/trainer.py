"""The training run: build everything from a config, train epoch by epoch, evaluate, checkpoint, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .build import build_detector
from .checkpoint import atomic_write, capture_rng_state, load_training_checkpoint, save_training_checkpoint
from .data import build_dataset, build_eval_loader, build_train_loader, set_epoch
from .distributed import all_gather_object, barrier, init_distributed, seed_everything
from .evaluate import evaluate_coco
from .logs import append_jsonl, setup_logging
from .optim import build_lr_scheduler, build_optimizer
from .train_loop import train_one_epoch

logger = logging.getLogger(__name__)

LATEST = "checkpoint.pth"


def start_run(config: dict[str, Any], out_dir: str | Path, resume: str | Path | None) -> tuple[Any, Path]:
    """Join the process group and prepare ``out_dir`` (``config.json``, ``train.log``) for a training run.

    A fresh run refuses to start where a ``checkpoint.pth`` exists, so an earlier run is never
    overwritten; the total batch size must split evenly over the processes.

    Returns:
        (the process's distributed info, ``out_dir`` as a Path).
    """
    info = init_distributed()
    out_dir = Path(out_dir)
    if resume is None and (out_dir / LATEST).exists():
        raise FileExistsError(
            f"{out_dir / LATEST} exists: pass --resume {out_dir / LATEST} to continue it, "
            "or choose another --out"
        )
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))
    barrier()
    setup_logging(out_dir / "train.log", info.is_main)
    batch_size = config["train"]["batch_size"]
    if batch_size % info.world_size:
        raise ValueError(f"train.batch_size {batch_size} is not divisible by {info.world_size} processes")
    return info, out_dir


def evaluation_due(eval_every: int, epoch: int, epochs: int) -> bool:
    """Whether to evaluate after ``epoch`` (0-based): every ``eval_every`` epochs and after the last one;
    never when ``eval_every`` is 0."""
    return eval_every > 0 and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)


def finish_epoch(
    out_dir: Path,
    is_main: bool,
    config: dict[str, Any],
    record: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """End epoch ``record["epoch"]`` on every process: gather the RNG states, then (main process) write
    ``checkpoint.pth`` atomically, keep ``checkpoint{epoch:04}.pth`` every ``train.keep_every`` epochs
    and append ``record`` to ``log.jsonl``."""
    epoch = record["epoch"]
    rng_states = all_gather_object(capture_rng_state())
    if not is_main:
        return
    keep = config["train"]["keep_every"]
    paths = [out_dir / LATEST] + (
        [out_dir / f"checkpoint{epoch:04}.pth"] if keep > 0 and (epoch + 1) % keep == 0 else []
    )
    for path in paths:
        save_training_checkpoint(path, model, optimizer, lr_scheduler, epoch, rng_states, config, scaler)
    append_jsonl(out_dir / "log.jsonl", record)


def run_training(
    config: dict[str, Any], out_dir: str | Path, resume: str | Path | None = None
) -> dict[str, Any]:
    """Train ``config`` in this process (one of ``torchrun``'s, or alone), writing into ``out_dir``.

    Every epoch: train, step the lr schedule, evaluate on the val split when due
    (``train.eval_every``), write ``checkpoint.pth`` atomically (and keep ``checkpoint{epoch:04}.pth``
    every ``train.keep_every`` epochs), append a line to ``log.jsonl``. ``resume`` continues a
    training checkpoint exactly: model, optimizer, schedule, epoch and every process's RNG state.

    ``out_dir`` also receives ``config.json`` and ``train.log``. A fresh run refuses to start where a
    ``checkpoint.pth`` exists, so an earlier run is never overwritten.

    Returns:
        ``{"epoch": last completed epoch, "val": last evaluation metrics or {}}``.
    """
    info, out_dir = start_run(config, out_dir, resume)
    train_cfg, schedule = config["train"], config["schedule"]
    torch.use_deterministic_algorithms(train_cfg["deterministic"], warn_only=True)

    seed_everything(train_cfg["seed"])  # same initial weights on every process, whatever their number
    model, criterion, postprocess = build_detector(config, info.device)
    seed_everything(train_cfg["seed"] + info.rank)
    model_ddp = DistributedDataParallel(model) if info.world_size > 1 else model
    optimizer = build_optimizer(model, config["optim"])
    lr_scheduler = build_lr_scheduler(optimizer, schedule)
    use_scaler = train_cfg["amp"] == "fp16" and info.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    train_set = build_dataset(config, train=True)
    val_set = build_dataset(config, train=False)
    num_workers = config["data"]["num_workers"]
    train_loader = build_train_loader(
        train_set,
        train_cfg["batch_size"] // info.world_size,
        num_workers,
        info.rank,
        info.world_size,
        train_cfg["seed"],
    )
    val_loader = build_eval_loader(
        val_set, train_cfg["eval_batch_size"], num_workers, info.rank, info.world_size
    )

    start_epoch = 0
    if resume is not None:
        start_epoch = load_training_checkpoint(
            resume, model, optimizer, lr_scheduler, info.rank, info.world_size, scaler
        )
        logger.info("resumed from %s at epoch %d", resume, start_epoch)
    logger.info(
        "training %s: %d train / %d val images, %d process(es) on %s, %d trainable parameters",
        config["model"]["name"],
        len(train_set),
        len(val_set),
        info.world_size,
        info.device,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, schedule["epochs"]):
        set_epoch(train_loader, epoch)
        stats = train_one_epoch(
            model_ddp,
            criterion,
            train_loader,
            optimizer,
            info.device,
            epoch,
            clip_max_norm=config["optim"]["clip_max_norm"],
            amp=train_cfg["amp"],
            scaler=scaler,
            progress=train_cfg["progress"] and info.is_main,
        )
        lr_scheduler.step()
        record: dict[str, Any] = {"epoch": epoch, "train": stats}
        if evaluation_due(train_cfg["eval_every"], epoch, schedule["epochs"]):
            result = evaluate_coco(
                model, postprocess, val_loader, val_set.coco, info.device, info.is_main, train_cfg["amp"]
            )
            metrics = record["val"] = result.metrics
            record["val_images"] = result.num_images
            logger.info("epoch %d evaluation:\n%s", epoch, result.table)
        finish_epoch(out_dir, info.is_main, config, record, model, optimizer, lr_scheduler, scaler)
        logger.info(
            "epoch %d: loss %.4f, %.1f s, %.1f img/s%s",
            epoch,
            stats["loss"],
            stats["time_s"],
            stats["images_per_s"],
            f", AP {metrics['AP']:.4f}" if "val" in record else "",
        )
    barrier()
    return {"epoch": schedule["epochs"] - 1, "val": metrics}
