"""The nuScenes family of the runtime: its data side and evaluator, shared by every multi-camera 3D
detector on nuScenes-format data (a detector adds only its model side, e.g.
:class:`bev.task.NuScenesDetectionTask`).

Config section ``data``: ``root``, ``version``, ``infos_dir``, ``train_split``, ``val_split``,
``image_size`` (W, H), ``img_norm`` (mmcv's ``img_norm_cfg``: ``mean``/``std`` 0-255 in the network's
channel order, ``to_rgb``), ``num_history``, ``num_workers``, ``on_bad_image``, the training
augmentation ``random_history``, ``photometric_distortion``, and PETR's ``prev_frame`` (PETRv2's earlier
frame), ``resize_crop_flip`` (random in training, the test-time resize + crop otherwise; replaces
``image_size``), ``global_rot_scale`` (training) and ``cbgs`` (class-balanced resampling of the train split,
:mod:`datasets.nuscenes.cbgs`); ``configs/bev/base.py`` documents each. The val split
is run sequentially, scene by scene (:class:`bev.sequential.SceneShardSampler`).
"""

from __future__ import annotations

import bisect
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from datasets.files import BadImageError
from datasets.nuscenes import (
    CAMERA_NAMES,
    NuScenesMultiViewDataset,
    collate_nuscenes,
    detections_to_results,
    draw_bev,
    draw_camera_boxes,
    evaluate_nuscenes,
)
from datasets.nuscenes.augment import GlobalRotScale, PhotoMetricDistortion, ResizeCropFlip
from datasets.nuscenes.cbgs import ClassBalancedDataset
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.evaluation import RESULTS_FILE, TP_ERROR_NAMES
from datasets.nuscenes.infos import infos_path
from datasets.nuscenes.prev_frame import PrevFrame
from datasets.nuscenes.visualize import denormalize_images
from detr2d.runtime.data import build_eval_loader
from detr2d.runtime.io import atomic_write_json
from detr2d.runtime.logs import plural
from detr2d.runtime.task import DataSide, Detections, EvalResult, Evaluator, Record

from .sequential import SceneShardSampler

logger = logging.getLogger(__name__)

SUMMARY_NAMES = ("mAP", *TP_ERROR_NAMES.values(), "NDS")


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


def prev_tokens(dataset: Dataset) -> dict[str, str]:
    """Sample token -> its scene's previous sample token ("" at a scene start), from the infos of a
    :class:`NuScenesMultiViewDataset` or of a ``ConcatDataset`` / ``Subset`` of them."""
    if isinstance(dataset, ConcatDataset):
        return {k: v for part in dataset.datasets for k, v in prev_tokens(part).items()}
    if isinstance(dataset, Subset):
        return prev_tokens(dataset.dataset)
    return {sample["token"]: sample["prev"] for sample in dataset.samples}


class InfosFiles(ConcatDataset):
    """The samples of several infos files for prediction (the first ``limit`` of each, in time order). A
    sample with a camera image that cannot be read yields None and is listed in :attr:`errors` as
    ``{"input": "<infos file>: sample <token>", "error"}``."""

    def __init__(
        self, paths: Sequence[str | Path], datasets: Sequence[NuScenesMultiViewDataset], limit: int | None
    ) -> None:
        parts = [Subset(d, range(min(limit, len(d)))) if limit is not None else d for d in datasets]
        super().__init__(parts)
        self.paths = [str(path) for path in paths]
        self.errors: list[dict[str, str]] = []

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return super().__getitem__(index)
        except BadImageError as error:
            part = bisect.bisect_right(self.cumulative_sizes, index)
            local = index - (self.cumulative_sizes[part - 1] if part else 0)
            dataset = self.datasets[part]
            token = (dataset.dataset if isinstance(dataset, Subset) else dataset).samples[local]["token"]
            self.errors.append({"input": f"{self.paths[part]}: sample {token}", "error": str(error)})
            return None


def collate_readable(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """:func:`collate_nuscenes` of the items that could be read (None when none could)."""
    items = [item for item in items if item is not None]
    return collate_nuscenes(items) if items else None


class NuScenesData(DataSide):
    """Multi-view nuScenes datasets (:class:`NuScenesMultiViewDataset`), sequential eval loaders, infos-file
    prediction and BEV / camera drawings. The model side gives the ground-truth range: ``task.pc_range()``.
    Training samples carry ``data.num_history`` earlier frames; val samples none (the sequential tester
    carries the previous BEV instead)."""

    unit = "samples"

    def image_options(self) -> dict[str, Any]:
        """The dataset's test-time image arguments: ``image_size`` (or PETR's test-time ``image_crop`` with
        ``data.resize_crop_flip``), the ``data.img_norm`` normalization and ``prev_frame`` (the test-time
        choice of ``data.prev_frame``)."""
        data = self.config["data"]
        norm = data["img_norm"]
        crop, prev = data.get("resize_crop_flip"), data.get("prev_frame")
        bot_pct = (crop or {}).get("bot_pct_range", (0.0, 0.0))
        return {
            "image_size": tuple(data["image_size"]) if crop is None else None,
            "image_crop": None if crop is None else ResizeCropFlip(crop["final_size"], None, bot_pct),
            "prev_frame": None if prev is None else PrevFrame(**{**prev, "train_range_s": None}),
            "mean": [value / 255.0 for value in norm["mean"]],
            "std": [value / 255.0 for value in norm["std"]],
            "bgr": not norm["to_rgb"],
        }

    def build_dataset(self, split: str) -> NuScenesMultiViewDataset | ClassBalancedDataset:
        """The train split with ``data.num_history`` history frames per sample (picked at random among
        the previous ``num_history + 1`` with ``data.random_history``), photometric distortion
        (``data.photometric_distortion``), PETR's random earlier frame, resize / crop / flip and scene
        rotation / scaling (``data.prev_frame``, ``resize_crop_flip``, ``global_rot_scale``) and the ground
        truth limited to the model's ``pc_range``, class-balanced by CBGS with ``data.cbgs`` (drawn once
        from ``train.seed``); or the val split with no history, no augmentation and no resampling (the
        test-time earlier frame and crop)."""
        data = self.config["data"]
        train = split == "train"
        photometric = data.get("photometric_distortion") if train else None
        options = self.image_options()
        if train and data.get("prev_frame") is not None:
            options["prev_frame"] = PrevFrame(**data["prev_frame"])
        if train and data.get("resize_crop_flip") is not None:
            options["image_crop"] = ResizeCropFlip(**data["resize_crop_flip"])
        rot_scale = data.get("global_rot_scale") if train else None
        dataset = NuScenesMultiViewDataset(
            infos_path(data["infos_dir"], data["train_split"] if train else data["val_split"]),
            data_root=Path(data["root"]),
            num_history=data["num_history"] if train else 0,
            pc_range=self.task.pc_range(),
            on_bad_image=data["on_bad_image"],
            random_history=train and data.get("random_history", False),
            photometric=None if photometric is None else PhotoMetricDistortion(**photometric),
            seed=self.config["train"]["seed"],
            scene_aug=None if rot_scale is None else GlobalRotScale(**rot_scale),
            **options,
        )
        if train and data.get("cbgs", False):
            return ClassBalancedDataset(dataset, self.config["train"]["seed"])
        return dataset

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_nuscenes(items)

    def eval_loader(self, dataset: Dataset, rank: int, world_size: int) -> DataLoader:
        """Batch size 1 over this process's whole scenes in time order (:class:`SceneShardSampler`)."""
        scene_tokens = [sample["scene_token"] for sample in dataset.samples]
        sampler = SceneShardSampler(scene_tokens, rank, world_size)
        return build_eval_loader(dataset, 1, self.config["data"]["num_workers"], collate_nuscenes, sampler)

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        """The samples of nuScenes infos files (``tools/create_data.py nuscenes``), each file's scenes in
        time order, images read from ``data.root`` at the config's image size; a sample with an unreadable
        camera image is skipped and listed in the dataset's ``errors``."""
        data = self.config["data"]
        options = self.image_options()
        datasets = [NuScenesMultiViewDataset(infos, data_root=data["root"], **options) for infos in inputs]
        return DataLoader(InfosFiles(inputs, datasets, limit), batch_size=1, collate_fn=collate_readable)

    def batch_size(self, batch: dict[str, Any]) -> int:
        return batch["img"].shape[0]

    def draw(
        self, batch: dict[str, Any], detections: Detections, score_threshold: float, out_dir: Path
    ) -> list[dict[str, Any]]:
        """``<token>_bev.png`` and ``<token>_cameras.jpg`` of one frame: predictions scoring at least
        ``score_threshold`` in class colours, captioned "class score" (higher scores on top), and the
        ground truth dashed, with legends (:mod:`datasets.nuscenes.visualize`); its entry
        ``{"sample_token", "bev", "cameras", "boxes" (K x 9 lidar frame), "scores", "labels"}``."""
        token = batch["sample_token"][0]
        result = {key: value.numpy() for key, value in detections[0].items()}
        keep = result["scores"] >= score_threshold
        boxes, scores, labels = result["boxes"][keep], result["scores"][keep], result["labels"][keep]
        bev_path, cameras_path = out_dir / f"{token}_bev.png", out_dir / f"{token}_cameras.jpg"
        gt_boxes, gt_labels = batch["gt_boxes"][0].numpy(), batch["gt_labels"][0].numpy()
        draw_bev(
            gt_boxes,
            boxes,
            bev_path,
            pred_scores=scores,
            score_threshold=score_threshold,
            pred_labels=labels,
            gt_labels=gt_labels,
        )
        options = self.image_options()
        order = slice(None, None, -1) if options["bgr"] else slice(None)  # the pictures need RGB
        num_cameras = len(CAMERA_NAMES)  # PETRv2's earlier views are not drawn
        images = denormalize_images(
            batch["img"][0, -1, :num_cameras].numpy()[:, order], options["mean"][order], options["std"][order]
        )
        lidar2img = batch["lidar2img"][0, -1, :num_cameras].numpy()
        draw_camera_boxes(
            images,
            lidar2img,
            boxes,
            labels,
            cameras_path,
            scores=scores,
            gt_boxes=gt_boxes,
            gt_labels=gt_labels,
        )
        logger.info("%s: %s drawn", token, plural(len(scores), "detection"))
        return [
            {
                "sample_token": token,
                "bev": str(bev_path),
                "cameras": str(cameras_path),
                "boxes": boxes.tolist(),
                "scores": scores.tolist(),
                "labels": labels.tolist(),
            }
        ]


@dataclass
class SampleBoxes(Record):
    """One sample's detections: ``boxes`` (K, 9) lidar frame [x, y, z, w, l, h, yaw, vx, vy], ``scores``
    (K,), ``labels`` (K,)."""

    sample_token: str
    boxes: list[list[float]]
    scores: list[float]
    labels: list[int]

    @property
    def key(self) -> str:
        return self.sample_token


class NuScenesEvaluator(Evaluator):
    """The official ``DetectionEval`` (``detection_cvpr_2019``) of the val split (database ``data.root`` /
    ``data.version``); files: ``results_nusc.json`` and the devkit's summaries."""

    records: list[SampleBoxes]

    def records_of(self, batch: dict[str, Any], detections: Detections) -> list[SampleBoxes]:
        return [
            SampleBoxes(token, d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist())
            for token, d in zip(batch["sample_token"], detections, strict=True)
        ]

    def detections(self) -> dict[str, dict[str, np.ndarray]]:
        """Sample token -> ``{"boxes" (K, 9), "scores" (K,), "labels" (K,)}`` of the records."""
        return {
            r.sample_token: {
                "boxes": np.asarray(r.boxes, np.float32).reshape(-1, 9),
                "scores": np.asarray(r.scores, np.float32),
                "labels": np.asarray(r.labels, np.int64),
            }
            for r in self.records
        }

    def evaluate(self) -> EvalResult:
        """Score the records; under ``data.on_bad_image=skip`` the samples that could not be read are left
        out (the devkit scores the others), logged, counted and listed in the metrics as
        ``skipped_samples``."""
        data = self.config["data"]
        detections = self.detections()
        skipped = sorted(set(prev_tokens(self.dataset)) - detections.keys())
        scored = None
        if skipped and data["on_bad_image"] == "skip":
            logger.warning(
                "%d of %s of split %r could not be read (data.on_bad_image=skip), not scored: %s",
                len(skipped),
                plural(len(self.dataset), "sample"),
                data["val_split"],
                skipped,
            )
            scored = detections.keys()
        with tempfile.TemporaryDirectory(prefix="bev_eval_") as tmp:  # the devkit needs a folder
            metrics = evaluate_nuscenes(
                detections,
                data["root"],
                data["version"],
                data["val_split"],
                self.out_dir or tmp,
                sample_tokens=scored,
            )
        if scored is not None:
            metrics["skipped_samples"] = skipped
        summary = {"NDS": metrics["NDS"], "mAP": metrics["mAP"]}
        return EvalResult(metrics, metrics_table(metrics), len(self.records), summary, len(skipped))

    def write_submission(self, out_dir: Path) -> list[Path]:
        """``out_dir/results_nusc.json``: the nuScenes submission (``meta``: camera only; ``results``:
        global-frame boxes of every sample token of the dataset, e.g. the test split, whose infos have no
        ground truth), converted with the database ``data.root`` / ``data.version``; nothing is scored.

        Raises:
            ValueError: the records do not cover exactly the samples of the dataset.
        """
        detections = self.detections()
        expected = set(prev_tokens(self.dataset))
        missing, extra = expected - detections.keys(), detections.keys() - expected
        if missing or extra:
            raise ValueError(
                f"a submission needs detections for exactly the {len(expected)} samples of the split: "
                f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} not in it "
                f"(e.g. {sorted(extra)[:3]})"
            )
        data = self.config["data"]
        results = detections_to_results(detections, open_nuscenes(data["root"], data["version"]))
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / RESULTS_FILE, results)
        logger.info("wrote %s: %s", out_dir / RESULTS_FILE, plural(len(results["results"]), "sample"))
        return [out_dir / RESULTS_FILE]
