"""The multi-camera BEV detector on nuScenes-format data as a runtime task (``nuscenes_detection``): the
model side; data and evaluation are the nuScenes family's (:mod:`bev.nuscenes`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from datasets.nuscenes.constants import CLASS_NAMES
from detr2d.layers.resnet import initialize_backbone, load_pretrained
from detr2d.runtime.checkpoint import load_checkpoint, load_torch_file
from detr2d.runtime.task import Detections, Task

from .augment import GridMask
from .builder import bev_model_config, build_bev_criterion, build_bev_model
from .loss import DetectionLoss3D
from .nuscenes import NuScenesData, NuScenesEvaluator, prev_tokens
from .official import load_official_checkpoint
from .sequential import iterate_sequential

logger = logging.getLogger(__name__)

#: Batch keys the model reads (``datasets.nuscenes.collate_nuscenes`` layout); the rest stays on the CPU.
MODEL_TENSOR_KEYS = ("img", "lidar2img", "can_bus", "ego_motion", "history_valid")
TARGET_KEYS = ("gt_boxes", "gt_labels")
#: Key prefixes of the released mmdet3d checkpoints.
OFFICIAL_PREFIXES = ("img_backbone.", "img_neck.", "pts_bbox_head.")


class NuScenesDetectionTask(Task):
    """BEVFormer-style / DETR3D-style detection on nuScenes-format data.

    Config sections: ``model`` (a variant ``name`` of :data:`bev.VARIANTS` plus :class:`bev.BEVModelConfig`
    fields), the nuScenes family's ``data`` (:mod:`bev.nuscenes`) and ``data.grid_mask``. The val split is
    run sequentially, scene by scene, with the previous BEV carried forward.

    GridMask (``data.grid_mask``: :class:`bev.augment.GridMask` arguments, or None) masks the current
    frame's images in :meth:`split_batch`, which only training calls: the release masks in the
    detector's image feature extraction when training, and encodes the history frames in eval mode, so
    exactly the current frame of a training sample is masked and evaluation never is. Keeping it out of
    the model keeps the model's forward deterministic (batch-invariance tests, exports).
    """

    name = "nuscenes_detection"
    data_class = NuScenesData
    evaluator_class = NuScenesEvaluator
    #: the typed model config of a variant name (+ overrides), and the strict loader of released files
    model_config_of = staticmethod(bev_model_config)
    load_released = staticmethod(load_official_checkpoint)

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        grid_mask = config["data"].get("grid_mask")
        self.grid_mask = None if grid_mask is None else GridMask(**grid_mask)

    @classmethod
    def model_defaults(cls, name: str, **overrides: Any) -> dict[str, Any]:
        """The whole ``model`` section of variant ``name``: its name and every field of its typed config
        (:class:`bev.BEVModelConfig`), ``overrides`` applied and validated (ValueError naming the field)."""
        return {"name": name, **dataclasses.asdict(cls.model_config_of(name, **overrides))}

    def _model_settings(self) -> tuple[str, dict[str, Any]]:
        settings = dict(self.config["model"])
        return settings.pop("name"), settings

    def model_config(self) -> Any:
        """The typed config of the config's ``model`` section."""
        name, settings = self._model_settings()
        return self.model_config_of(name, **settings)

    def build_model(self, pretrained: bool = False) -> nn.Module:
        name, settings = self._model_settings()
        model = build_bev_model(name, **settings)
        if pretrained:
            report = initialize_backbone(model.backbone, self.model_config().pretrained)
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
            self.load_released(model, {"state_dict": state}, source=str(path))
        else:
            load_checkpoint(model, state, strict=True, source=str(path))

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        """The first stage: the image backbone from a checkpoint holding a ResNet of the same depth and
        style, e.g. a Deformable DETR trained on COCO (``backbone.0.body.*``) or an FCOS3D / BEV release
        (``img_backbone.*``); layers the BEV model does not build are ignored. The neck and the BEV
        layers keep their initialization (the 2D model's input projections do not map onto the FPN)."""
        return str(load_pretrained(model.backbone, path, strict=False))

    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    def class_names(self) -> dict[int, str]:
        return dict(enumerate(CLASS_NAMES))

    def pc_range(self) -> tuple[float, ...]:
        """[x_min, y_min, z_min, x_max, y_max, z_max] of the model (the data side's ground-truth range)."""
        return self.model_config().pc_range

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

    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[dict[str, Any], Detections]]:
        """Sequential inference (:func:`bev.sequential.iterate_sequential`) over the readable batches."""
        readable = (batch for batch in loader if batch is not None)
        return iterate_sequential(model, readable, prev_tokens(loader.dataset), device, amp)
