"""Official nuScenes evaluation of a BEV detector: sequential inference on every process's scenes,
detections gathered on the main process and scored by the devkit's ``DetectionEval``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bev import MultiViewDetector3D
from datasets.nuscenes import evaluate_nuscenes
from datasets.nuscenes.evaluation import TP_ERROR_NAMES
from detr2d.engine.distributed import all_gather_object, broadcast_object

from .data import prev_tokens
from .sequential import Detections, predict_sequential

logger = logging.getLogger(__name__)

SUMMARY_NAMES = ("mAP", *TP_ERROR_NAMES.values(), "NDS")


@dataclass
class NuScenesEvalResult:
    """``metrics``: the content of ``metrics.json`` (``mAP``, ``NDS``, the five TP errors, per-class
    values, ...; see :func:`datasets.nuscenes.evaluate_nuscenes`), the same on every process;
    ``table``: a printable summary; ``num_samples``: samples evaluated over all processes."""

    metrics: dict[str, Any]
    table: str
    num_samples: int


def metrics_table(metrics: dict[str, Any]) -> str:
    """Devkit-style summary of ``metrics.json``: mAP, TP errors, NDS, then AP and TP errors per class."""
    lines = [f"{name}: {metrics[name]:.4f}" for name in SUMMARY_NAMES]
    short = list(TP_ERROR_NAMES.items())
    lines.append("")
    lines.append(f"{'Object Class':<22}{'AP':>8}" + "".join(f"{s[1:]:>8}" for _, s in short))
    for name, ap in metrics["per_class_AP"].items():
        errors = metrics["per_class_tp_errors"].get(name, {})
        cells = "".join(
            f"{errors[key]:>8.3f}" if errors.get(key) is not None else f"{'nan':>8}" for key, _ in short
        )
        lines.append(f"{name:<22}{ap:>8.3f}{cells}")
    return "\n".join(lines)


def evaluate_bev(
    model: MultiViewDetector3D,
    loader: DataLoader,
    config: dict[str, Any],
    out_dir: str | Path,
    device: torch.device,
    is_main: bool,
) -> NuScenesEvalResult:
    """Detect the samples of ``loader`` sequentially (this process's scenes of a
    :class:`NuScenesMultiViewDataset`, see :func:`bev.engine.data.build_sequential_loader`), gather all
    processes' detections and score them with the official evaluation on the main process, which writes
    ``results_nusc.json``, the devkit's metric files and ``metrics.json`` into ``out_dir``.

    ``model`` must be the unwrapped model (not DDP). ``config["data"]`` gives the nuScenes ``root``,
    ``version`` and ``val_split``.
    """
    detections = predict_sequential(
        model, loader, prev_tokens(loader.dataset), device, config["train"]["amp"]
    )
    gathered: list[dict[str, Detections]] = all_gather_object(detections)
    num_samples = sum(len(part) for part in gathered)
    metrics: dict[str, Any] = {}
    if is_main:
        merged = {token: value for part in gathered for token, value in part.items()}
        data = config["data"]
        metrics = evaluate_nuscenes(merged, data["root"], data["version"], data["val_split"], out_dir)
        logger.info("wrote %s", Path(out_dir) / "metrics.json")
    metrics = broadcast_object(metrics)
    return NuScenesEvalResult(metrics, metrics_table(metrics), num_samples)
