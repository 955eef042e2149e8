"""Official nuScenes detection evaluation of lidar-frame predictions.

Predictions are given per sample token as ``{"boxes": (K, 9), "scores": (K,), "labels": (K,)}`` (numpy arrays
or tensors; box rows as in boxes.py, labels index ``class_names``). They are converted to the devkit's
results JSON in the global frame and scored by ``DetectionEval`` with ``detection_cvpr_2019``.

Only some samples of a split can be scored (``sample_tokens``: e.g. those whose images could be read); the
devkit then loads the ground truth of those samples only.

A split without a single predicted box (an early model whose boxes all fall outside the range) gets the
devkit's own metrics for no predictions (mAP 0, NDS 0, every TP error 1): the devkit's box filter, which
raises ``Invalid box type: None`` on a box set without boxes, is bypassed for that set only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.loaders import filter_eval_boxes
from nuscenes.eval.detection import evaluate as devkit_evaluate
from nuscenes.eval.detection.evaluate import DetectionEval

from datasets.nuscenes.boxes import check_boxes, lidar_boxes_to_global
from datasets.nuscenes.constants import CLASS_NAMES, DEFAULT_ATTRIBUTE, MOVING_SPEED_THRESHOLD
from datasets.nuscenes.database import open_nuscenes, sample_lidar2global
from datasets.nuscenes.splits import sample_tokens_of_split

logger = logging.getLogger(__name__)
EVAL_CONFIG = "detection_cvpr_2019"
RESULTS_FILE = "results_nusc.json"
METRICS_FILE = "metrics.json"
TP_ERROR_NAMES = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}
_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
_CYCLES = ("bicycle", "motorcycle")
CAMERA_ONLY_META = {
    "use_camera": True,
    "use_lidar": False,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}


def attribute_name(detection_name: str, speed: float) -> str:
    """Attribute for a predicted box: the class's moving/still attribute by speed (m/s), else its default."""
    if speed > MOVING_SPEED_THRESHOLD:
        if detection_name in _VEHICLES:
            return "vehicle.moving"
        if detection_name in _CYCLES:
            return "cycle.with_rider"
    else:
        if detection_name == "pedestrian":
            return "pedestrian.standing"
        if detection_name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[detection_name]


def _as_array(value: Any) -> np.ndarray:
    """A numpy array of an array-like or a (possibly CUDA) tensor."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _sample_results(
    token: str,
    detections: Mapping[str, Any],
    lidar2global: np.ndarray,
    class_names: Sequence[str],
    max_boxes: int,
) -> list[dict[str, Any]]:
    missing = {"boxes", "scores", "labels"} - set(detections)
    if missing:
        raise ValueError(f"detections of sample {token} lack key(s) {sorted(missing)}")
    boxes = check_boxes(_as_array(detections["boxes"]), f"boxes of sample {token}")
    scores = _as_array(detections["scores"]).astype(np.float64).reshape(-1)
    labels = _as_array(detections["labels"]).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"sample {token}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    if len(boxes) > max_boxes:
        raise ValueError(f"sample {token} has {len(boxes)} boxes; the evaluation allows at most {max_boxes}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"sample {token}: scores contain NaN or infinite values")
    if len(labels) and (
        not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= len(class_names)
    ):
        raise ValueError(
            f"sample {token}: labels must be integers in [0, {len(class_names)}), got "
            f"{labels.dtype} in [{labels.min()}, {labels.max()}]"
        )
    centers, sizes, rotations, velocities = lidar_boxes_to_global(boxes, lidar2global)
    results = []
    for k in range(len(boxes)):
        name = class_names[int(labels[k])]
        results.append(
            {
                "sample_token": token,
                "translation": centers[k].tolist(),
                "size": sizes[k].tolist(),
                "rotation": rotations[k].tolist(),
                "velocity": velocities[k].tolist(),
                "detection_name": name,
                "detection_score": float(scores[k]),
                "attribute_name": attribute_name(name, float(np.hypot(*velocities[k]))),
            }
        )
    return results


def detections_to_results(
    detections: Mapping[str, Mapping[str, Any]],
    nusc: NuScenes,
    class_names: Sequence[str] = CLASS_NAMES,
    meta: Mapping[str, bool] = CAMERA_ONLY_META,
) -> dict[str, Any]:
    """Devkit results JSON ``{"meta": ..., "results": {token: [box dicts]}}`` of lidar-frame detections.

    Sizes are w, l, h; rotations are global upright quaternions (w, x, y, z); velocities are global (vx, vy).
    """
    unknown = [name for name in class_names if name not in DEFAULT_ATTRIBUTE]
    if unknown:
        raise ValueError(f"class names {unknown} are not nuScenes detection classes")
    max_boxes = config_factory(EVAL_CONFIG).max_boxes_per_sample
    sample_tokens = {sample["token"] for sample in nusc.sample}
    results = {}
    for token, sample_detections in detections.items():
        if token not in sample_tokens:
            raise ValueError(
                f"detections name sample token {token!r}, which is not in {nusc.dataroot} {nusc.version}"
            )
        results[token] = _sample_results(
            token, sample_detections, sample_lidar2global(nusc, token), class_names, max_boxes
        )
    return {"meta": dict(meta), "results": results}


def _check_coverage(detections: Mapping[str, Any], split_tokens: list[str], split: str) -> None:
    missing = set(split_tokens) - set(detections)
    extra = set(detections) - set(split_tokens)
    if missing or extra:
        raise ValueError(
            f"the evaluation needs detections for exactly the {len(split_tokens)} samples of split "
            f"{split!r}: "
            f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} not in the split "
            f"(e.g. {sorted(extra)[:3]}); an empty prediction is allowed for a sample"
        )


def _filter_eval_boxes_allowing_none(
    nusc: NuScenes, eval_boxes: EvalBoxes, max_dist: dict[str, float], verbose: bool = False
) -> EvalBoxes:
    """The devkit's ``filter_eval_boxes``, except that a box set without any box passes unchanged."""
    if not any(eval_boxes.boxes.values()):
        return eval_boxes
    return filter_eval_boxes(nusc, eval_boxes, max_dist, verbose=verbose)


def _only_samples(tokens: list[str]) -> Any:
    """The devkit's ``load_gt`` keeping the ground truth of ``tokens`` only."""
    load_gt = devkit_evaluate.load_gt

    def load(nusc: NuScenes, eval_split: str, box_cls: type, verbose: bool = False) -> EvalBoxes:
        boxes = load_gt(nusc, eval_split, box_cls, verbose=verbose)
        kept = EvalBoxes()
        for token in tokens:
            kept.add_boxes(token, boxes[token])
        return kept

    return load


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    return value


def evaluate_nuscenes(
    detections: Mapping[str, Mapping[str, Any]],
    nusc_root: str | Path,
    version: str,
    split: str,
    out_dir: str | Path,
    class_names: Sequence[str] = CLASS_NAMES,
    nusc: NuScenes | None = None,
    verbose: bool = False,
    sample_tokens: Collection[str] | None = None,
) -> dict[str, Any]:
    """Score ``detections`` (one entry per sample token of ``split``, or of ``sample_tokens``: a part of
    the split, e.g. the samples whose images could be read) with the official evaluation.

    Writes ``results_nusc.json``, the devkit's ``metrics_summary.json``/``metrics_details.json`` and
    ``metrics.json`` into ``out_dir`` and returns the ``metrics.json`` content (printing nothing unless
    ``verbose``: the callers print one summary, e.g. :func:`bev.nuscenes.metrics_table`):
    ``mAP``, ``NDS``, ``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE`` (floats), ``per_class_AP``
    {class: AP}, ``per_class_tp_errors`` {class: {error: value or None}}, ``split``, ``version``,
    ``num_samples`` (scored). ``split`` is any predefined split fitting ``version`` or a custom one of
    ``<root>/<version>/splits.json``. ``nusc`` reuses an already loaded database of ``nusc_root``/``version``.
    """
    nusc = nusc if nusc is not None else open_nuscenes(nusc_root, version)
    if nusc.version != version:
        raise ValueError(f"the given database is {nusc.version!r}, not {version!r}")
    split_tokens = sample_tokens_of_split(nusc, split)
    part = split_tokens if sample_tokens is None else [t for t in split_tokens if t in set(sample_tokens)]
    if sample_tokens is not None and len(part) != len(set(sample_tokens)):
        outside = sorted(set(sample_tokens) - set(split_tokens))
        raise ValueError(f"sample_tokens name {len(outside)} sample(s) not in split {split!r}: {outside[:3]}")
    _check_coverage(detections, part, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / RESULTS_FILE
    results = detections_to_results(detections, nusc, class_names)
    result_path.write_text(json.dumps(results))
    no_boxes = not any(results["results"].values())
    if no_boxes:
        logger.warning(
            "no predicted box in any of the %d sample%s of split %r: scoring them as the devkit scores "
            "no predictions (mAP 0, NDS 0)",
            len(part),
            "" if len(part) == 1 else "s",
            split,
        )
    with contextlib.ExitStack() as patches:
        if no_boxes:
            patches.enter_context(
                mock.patch.object(devkit_evaluate, "filter_eval_boxes", _filter_eval_boxes_allowing_none)
            )
        if len(part) < len(split_tokens):  # predefined splits: load_gt; custom ones: their sample list
            patches.enter_context(mock.patch.object(devkit_evaluate, "load_gt", _only_samples(part)))
            patches.enter_context(
                mock.patch.object(devkit_evaluate, "get_samples_of_custom_split", lambda **_: part)
            )
        evaluator = DetectionEval(
            nusc,
            config_factory(EVAL_CONFIG),
            str(result_path),
            eval_set=split,
            output_dir=str(out_dir),
            verbose=verbose,
        )
    with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
        summary = evaluator.main(plot_examples=0, render_curves=False)  # prints its summary: once is ours
    metrics: dict[str, Any] = {"mAP": summary["mean_ap"], "NDS": summary["nd_score"]}
    metrics.update({short: summary["tp_errors"][name] for name, short in TP_ERROR_NAMES.items()})
    metrics["per_class_AP"] = dict(summary["mean_dist_aps"])
    metrics["per_class_tp_errors"] = _json_safe(summary["label_tp_errors"])
    metrics.update({"split": split, "version": version, "num_samples": len(part)})
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics
