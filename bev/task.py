"""The multi-camera BEV detector on nuScenes-format data as a runtime task (``nuscenes_detection``)."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from datasets.nuscenes import (
    NuScenesMultiViewDataset,
    collate_nuscenes,
    detections_to_results,
    draw_bev,
    draw_camera_boxes,
    evaluate_nuscenes,
)
from datasets.nuscenes.augment import PhotoMetricDistortion
from datasets.nuscenes.constants import CLASS_NAMES
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.evaluation import RESULTS_FILE, TP_ERROR_NAMES
from datasets.nuscenes.infos import infos_path
from datasets.nuscenes.visualize import denormalize_images
from detr2d.backbone import initialize_backbone, load_pretrained
from detr2d.checkpoint import load_checkpoint, load_torch_file
from detr2d.runtime.data import build_eval_loader
from detr2d.runtime.io import atomic_write_json
from detr2d.runtime.task import EvalResult, Records, Task

from .augment import GridMask
from .builder import bev_model_config, build_bev_criterion, build_bev_model
from .loss import DetectionLoss3D
from .official import load_official_checkpoint
from .sequential import SceneShardSampler, iterate_sequential

logger = logging.getLogger(__name__)

#: Batch keys the model reads (``datasets.nuscenes.collate_nuscenes`` layout); the rest stays on the CPU.
MODEL_TENSOR_KEYS = ("img", "lidar2img", "can_bus", "ego_motion", "history_valid")
TARGET_KEYS = ("gt_boxes", "gt_labels")
#: Key prefixes of the released mmdet3d checkpoints.
OFFICIAL_PREFIXES = ("img_backbone.", "img_neck.", "pts_bbox_head.")
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


def detections_of(records: Records) -> dict[str, dict[str, np.ndarray]]:
    """Sample token -> ``{"boxes" (K, 9), "scores" (K,), "labels" (K,)}`` of the task's records."""
    return {
        r["sample_token"]: {
            "boxes": np.asarray(r["boxes"], np.float32).reshape(-1, 9),
            "scores": np.asarray(r["scores"], np.float32),
            "labels": np.asarray(r["labels"], np.int64),
        }
        for r in records
    }


class InfosFiles(ConcatDataset):
    """The samples of several infos files for prediction (the first ``limit`` of each, in time order)."""

    def __init__(self, datasets: Sequence[NuScenesMultiViewDataset], limit: int | None) -> None:
        parts = [Subset(d, range(min(limit, len(d)))) if limit is not None else d for d in datasets]
        super().__init__(parts)
        self.errors: list[dict[str, str]] = []


class NuScenesDetectionTask(Task):
    """BEVFormer-style / DETR3D-style detection on nuScenes-format data.

    Config sections: ``model`` (a variant ``name`` of :data:`bev.VARIANTS` plus :class:`bev.BEVModelConfig`
    fields), ``data`` (``root``, ``version``, ``infos_dir``, ``train_split``, ``val_split``, ``image_size``
    (W, H), ``img_norm`` (mmcv's ``img_norm_cfg``: ``mean``/``std`` 0-255 in the network's channel order,
    ``to_rgb``), ``num_history``, ``num_workers``, and the training augmentation: ``random_history``,
    ``photometric_distortion``, ``grid_mask``). Training samples carry ``num_history`` earlier frames; the
    val split is run sequentially, scene by scene, with the previous BEV carried forward.

    GridMask (``data.grid_mask``: :class:`bev.augment.GridMask` arguments, or None) masks the current
    frame's images in :meth:`split_batch`, which only training calls: the release masks in the
    detector's image feature extraction when training, and encodes the history frames in eval mode, so
    exactly the current frame of a training sample is masked and evaluation never is. Keeping it out of
    the model keeps the model's forward deterministic (batch-invariance tests, exports).
    """

    name = "nuscenes_detection"
    unit = "samples"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        grid_mask = config["data"].get("grid_mask")
        self.grid_mask = None if grid_mask is None else GridMask(**grid_mask)

    @classmethod
    def model_defaults(cls, name: str, **overrides: Any) -> dict[str, Any]:
        """The whole ``model`` section of variant ``name``: its name and every :class:`bev.BEVModelConfig`
        field, ``overrides`` applied and validated (ValueError naming the field)."""
        return {"name": name, **dataclasses.asdict(bev_model_config(name, **overrides))}

    def _model_settings(self) -> tuple[str, dict[str, Any]]:
        settings = dict(self.config["model"])
        return settings.pop("name"), settings

    def build_model(self, pretrained: bool = False) -> nn.Module:
        name, settings = self._model_settings()
        model = build_bev_model(name, **settings)
        if pretrained:
            report = initialize_backbone(model.backbone, bev_model_config(name, **settings).pretrained)
            if report is not None:
                logger.info("%s", report)
        return model

    def build_criterion(self) -> DetectionLoss3D:
        name, settings = self._model_settings()
        return build_bev_criterion(name, **settings)

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        """Our checkpoints (strict), or a released BEVFormer / DETR3D ``.pth`` (mmdet3d key names:
        ``img_backbone.*``, ``img_neck.*``, ``pts_bbox_head.*``), mapped with zero unused and zero
        missing tensors (:func:`bev.official.load_official_checkpoint`)."""
        checkpoint = load_torch_file(path)
        state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
        if any(key.startswith(OFFICIAL_PREFIXES) for key in state):
            load_official_checkpoint(model, {"state_dict": state})
        else:
            load_checkpoint(model, state, strict=True)

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        """The first stage: the image backbone from a checkpoint holding a ResNet of the same depth and
        style, e.g. a Deformable DETR trained on COCO (``backbone.0.body.*``) or an FCOS3D / BEV release
        (``img_backbone.*``); layers the BEV model does not build are ignored. The neck and the BEV
        layers keep their initialization (the 2D model's input projections do not map onto the FPN)."""
        return str(load_pretrained(model.backbone, path, strict=False))

    def class_names(self) -> dict[int, str]:
        return dict(enumerate(CLASS_NAMES))

    def _image_options(self) -> dict[str, Any]:
        """The dataset's image arguments: ``image_size`` and the ``data.img_norm`` normalization."""
        data = self.config["data"]
        norm = data["img_norm"]
        return {
            "image_size": tuple(data["image_size"]),
            "mean": [value / 255.0 for value in norm["mean"]],
            "std": [value / 255.0 for value in norm["std"]],
            "bgr": not norm["to_rgb"],
        }

    def build_dataset(self, split: str) -> NuScenesMultiViewDataset:
        """The train split with ``data.num_history`` history frames per sample (picked at random among
        the previous ``num_history + 1`` with ``data.random_history``), photometric distortion
        (``data.photometric_distortion``) and the ground truth limited to the model's ``pc_range``; or
        the val split with no history (the sequential tester carries the previous BEV instead) and no
        augmentation."""
        data = self.config["data"]
        train = split == "train"
        photometric = data.get("photometric_distortion") if train else None
        return NuScenesMultiViewDataset(
            infos_path(data["infos_dir"], data["train_split"] if train else data["val_split"]),
            data_root=Path(data["root"]),
            num_history=data["num_history"] if train else 0,
            point_cloud_range=self._pc_range(),
            on_bad_image=data["on_bad_image"],
            random_history=train and data.get("random_history", False),
            photometric=None if photometric is None else PhotoMetricDistortion(**photometric),
            seed=self.config["train"]["seed"],
            **self._image_options(),
        )

    def _pc_range(self) -> tuple[float, ...]:
        name, settings = self._model_settings()
        return bev_model_config(name, **settings).pc_range

    def collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_nuscenes(items)

    def eval_loader(self, dataset: Dataset, rank: int, world_size: int) -> DataLoader:
        """Batch size 1 over this process's whole scenes in time order (:class:`SceneShardSampler`)."""
        scene_tokens = [sample["scene_token"] for sample in dataset.samples]
        sampler = SceneShardSampler(scene_tokens, rank, world_size)
        return build_eval_loader(dataset, 1, self.config["data"]["num_workers"], collate_nuscenes, sampler)

    def split_batch(self, batch: dict[str, Any], device: torch.device) -> tuple[tuple[Any, ...], Any]:
        """The model's part of a training batch on ``device`` (``img`` (B, T, Ncam, 3, H, W), its current
        frame ``img[:, -1]`` GridMasked when ``data.grid_mask`` is set, ``lidar2img``, ``can_bus``,
        ``ego_motion``, ``history_valid``) and the targets ``gt_boxes`` / ``gt_labels``."""
        inputs = {key: batch[key].to(device) for key in MODEL_TENSOR_KEYS}
        if self.grid_mask is not None:
            img = inputs["img"]
            inputs["img"] = torch.cat([img[:, :-1], self.grid_mask(img[:, -1])[:, None]], dim=1)
        targets = {key: [t.to(device) for t in batch[key]] for key in TARGET_KEYS}
        return (inputs,), targets

    def batch_size(self, batch: dict[str, Any]) -> int:
        return batch["img"].shape[0]

    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, torch.Tensor]]]]:
        return iterate_sequential(model, loader, prev_tokens(loader.dataset), device, amp)

    def records(self, batch: dict[str, Any], detections: list[dict[str, torch.Tensor]]) -> Records:
        """One record per sample: ``{"sample_token", "boxes" (K x 9), "scores", "labels"}``."""
        return [
            {"sample_token": token, **{key: value.tolist() for key, value in d.items()}}
            for token, d in zip(batch["sample_token"], detections, strict=True)
        ]

    def score(self, records: Records, dataset: Dataset, out_dir: Path | None) -> EvalResult:
        """The official ``DetectionEval`` (``detection_cvpr_2019``) of the val split; ``out_dir`` keeps
        ``results_nusc.json`` and the devkit's files."""
        data = self.config["data"]
        with tempfile.TemporaryDirectory(prefix="bev_eval_") as tmp:  # the devkit needs a folder
            metrics = evaluate_nuscenes(
                detections_of(records), data["root"], data["version"], data["val_split"], out_dir or tmp
            )
        summary = {"NDS": metrics["NDS"], "mAP": metrics["mAP"]}
        return EvalResult(metrics, metrics_table(metrics), len(records), records, summary)

    def write_results(self, records: Records, dataset: Dataset, out_dir: Path) -> list[Path]:
        """``out_dir/results_nusc.json``: the nuScenes submission (``meta``: camera only; ``results``:
        global-frame boxes of every sample token of ``dataset``, e.g. the test split, whose infos have no
        ground truth), converted with the database ``data.root`` / ``data.version``; nothing is scored.

        Raises:
            ValueError: the records do not cover exactly the samples of ``dataset``.
        """
        detections = detections_of(records)
        expected = set(prev_tokens(dataset))
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
        logger.info("wrote %s: %d samples", out_dir / RESULTS_FILE, len(results["results"]))
        return [out_dir / RESULTS_FILE]

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        """The samples of nuScenes infos files (``tools/create_data.py nuscenes``), each file's scenes in
        time order, images read from ``data.root`` at the config's image size."""
        data = self.config["data"]
        datasets = [
            NuScenesMultiViewDataset(infos, data_root=data["root"], **self._image_options())
            for infos in inputs
        ]
        return DataLoader(InfosFiles(datasets, limit), batch_size=1, collate_fn=collate_nuscenes)

    def draw(
        self,
        batch: dict[str, Any],
        detections: list[dict[str, torch.Tensor]],
        score_threshold: float,
        out_dir: Path,
    ) -> Records:
        """``<token>_bev.png`` (ground truth and predictions, with a legend) and ``<token>_cameras.jpg``
        (the six cameras with the predictions in class colours) of one frame, detections scoring at least
        ``score_threshold``; its record ``{"sample_token", "bev", "cameras", "boxes" (K x 9 lidar frame),
        "scores", "labels"}``."""
        token = batch["sample_token"][0]
        result = {key: value.numpy() for key, value in detections[0].items()}
        keep = result["scores"] >= score_threshold
        boxes, scores, labels = result["boxes"][keep], result["scores"][keep], result["labels"][keep]
        bev_path, cameras_path = out_dir / f"{token}_bev.png", out_dir / f"{token}_cameras.jpg"
        draw_bev(batch["gt_boxes"][0].numpy(), boxes, bev_path)
        options = self._image_options()
        order = slice(None, None, -1) if options["bgr"] else slice(None)  # the pictures need RGB
        images = denormalize_images(
            batch["img"][0, -1].numpy()[:, order], options["mean"][order], options["std"][order]
        )
        draw_camera_boxes(images, batch["lidar2img"][0, -1].numpy(), boxes, labels, cameras_path)
        logger.info("%s: %d detections drawn", token, len(scores))
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
