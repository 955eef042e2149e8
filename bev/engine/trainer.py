"""The BEV training run: build everything from a config, train epoch by epoch with history frames,
evaluate with the official nuScenes metrics, checkpoint, resume.

The run follows :func:`detr2d.engine.trainer.run_training` and shares its pieces (checkpoint format
and exact resume, distributed setup, logging, AdamW parameter groups); what differs is the data
(multi-camera frames with history), the per-iteration warmup + cosine schedule and the evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from detr2d.engine.checkpoint import load_training_checkpoint
from detr2d.engine.distributed import barrier, seed_everything
from detr2d.engine.optim import build_optimizer
from detr2d.engine.trainer import evaluation_due, finish_epoch, start_run

from .build import build_bev_detector
from .data import build_bev_train_loader, build_nuscenes_dataset, build_sequential_loader
from .evaluate import evaluate_bev
from .schedule import build_warmup_cosine
from .train_loop import train_one_epoch_bev

logger = logging.getLogger(__name__)

VAL_DIR = "val"


def run_bev_training(
    config: dict[str, Any], out_dir: str | Path, resume: str | Path | None = None
) -> dict[str, Any]:
    """Train the BEV ``config`` in this process (one of ``torchrun``'s, or alone), writing into ``out_dir``.

    Every epoch: train (each sample with ``data.num_history`` earlier frames of its scene, the lr
    schedule stepped every iteration), evaluate on the val split when due (``train.eval_every``; the
    evaluation files go to ``out_dir/val``), write ``checkpoint.pth`` atomically (and keep
    ``checkpoint{epoch:04}.pth`` every ``train.keep_every`` epochs), append a line to ``log.jsonl``.
    ``resume`` continues a training checkpoint exactly. ``out_dir`` also receives ``config.json`` and
    ``train.log``; a fresh run refuses to start where a ``checkpoint.pth`` exists.

    Returns:
        ``{"epoch": last completed epoch, "val": last evaluation metrics or {}}``.
    """
    info, out_dir = start_run(config, out_dir, resume)
    train_cfg, schedule = config["train"], config["schedule"]
    if train_cfg["amp"] == "fp16":
        raise ValueError('BEV training supports amp None or "bf16" (fp16 would need loss scaling)')
    torch.use_deterministic_algorithms(train_cfg["deterministic"], warn_only=True)

    seed_everything(train_cfg["seed"])  # same initial weights on every process
    model = build_bev_detector(config, info.device)
    seed_everything(train_cfg["seed"] + info.rank)
    model_ddp = DistributedDataParallel(model) if info.world_size > 1 else model
    optimizer = build_optimizer(model, config["optim"])

    train_set = build_nuscenes_dataset(config, train=True)
    val_set = build_nuscenes_dataset(config, train=False)
    num_workers = config["data"]["num_workers"]
    train_loader = build_bev_train_loader(
        train_set,
        train_cfg["batch_size"] // info.world_size,
        num_workers,
        info.rank,
        info.world_size,
        train_cfg["seed"],
    )
    val_loader = build_sequential_loader(val_set, num_workers, info.rank, info.world_size)
    lr_scheduler = build_warmup_cosine(optimizer, schedule, len(train_loader))

    start_epoch = 0
    if resume is not None:
        start_epoch = load_training_checkpoint(
            resume, model, optimizer, lr_scheduler, info.rank, info.world_size
        )
        logger.info("resumed from %s at epoch %d", resume, start_epoch)
    logger.info(
        "training %s: %d train samples (%d history frames each) / %d val samples, %d process(es) on %s, "
        "%d trainable parameters",
        config["model"]["name"],
        len(train_set),
        train_set.num_history,
        len(val_set),
        info.world_size,
        info.device,
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, schedule["epochs"]):
        train_loader.sampler.set_epoch(epoch)
        stats = train_one_epoch_bev(
            model_ddp,
            model.criterion,
            train_loader,
            optimizer,
            lr_scheduler,
            info.device,
            epoch,
            clip_max_norm=config["optim"]["clip_max_norm"],
            amp=train_cfg["amp"],
            progress=train_cfg["progress"] and info.is_main,
        )
        record: dict[str, Any] = {"epoch": epoch, "train": stats}
        if evaluation_due(train_cfg["eval_every"], epoch, schedule["epochs"]):
            result = evaluate_bev(model, val_loader, config, out_dir / VAL_DIR, info.device, info.is_main)
            metrics = record["val"] = {k: result.metrics[k] for k in ("mAP", "NDS")}
            record["val_samples"] = result.num_samples
            logger.info("epoch %d evaluation:\n%s", epoch, result.table)
        finish_epoch(out_dir, info.is_main, config, record, model, optimizer, lr_scheduler)
        logger.info(
            "epoch %d: loss %.4f (cls %.4f, bbox %.4f), lr %.2e, %.1f s, %.2f samples/s%s",
            epoch,
            stats["loss"],
            stats["loss_cls"],
            stats["loss_bbox"],
            stats["lr"],
            stats["time_s"],
            stats["samples_per_s"],
            f", NDS {metrics['NDS']:.4f} mAP {metrics['mAP']:.4f}" if "val" in record else "",
        )
    barrier()
    return {"epoch": schedule["epochs"] - 1, "val": metrics}
