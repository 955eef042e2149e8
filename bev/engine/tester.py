"""Evaluate a BEV checkpoint on a config's nuScenes val split (single process or under ``torchrun``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from detr2d import load_checkpoint
from detr2d.engine.distributed import init_distributed

from .build import build_bev_detector
from .data import build_nuscenes_dataset, build_sequential_loader
from .evaluate import NuScenesEvalResult, evaluate_bev


def run_nuscenes_test(
    config: dict[str, Any], checkpoint: str | Path, out_dir: str | Path | None = None
) -> NuScenesEvalResult:
    """Load ``checkpoint`` (ours or a bare / ``{'model': ...}`` state_dict; strict key match), run the
    sequential tester over the val split (previous BEV carried within each scene) and score it with the
    official nuScenes evaluation.

    With ``out_dir`` the main process keeps the evaluation files there: ``metrics.json`` (``mAP``,
    ``NDS``, TP errors, per-class values), ``results_nusc.json`` (the detections in the devkit's
    submission format) and the devkit's ``metrics_summary.json`` / ``metrics_details.json``.
    """
    info = init_distributed()
    model = build_bev_detector(config, info.device)
    load_checkpoint(model, checkpoint, strict=True)
    dataset = build_nuscenes_dataset(config, train=False)
    loader = build_sequential_loader(dataset, config["data"]["num_workers"], info.rank, info.world_size)
    if out_dir is not None:
        return evaluate_bev(model, loader, config, out_dir, info.device, info.is_main)
    with tempfile.TemporaryDirectory(prefix="bev_eval_") as tmp:  # the devkit needs a folder to write in
        return evaluate_bev(model, loader, config, tmp, info.device, info.is_main)
