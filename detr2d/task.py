"""Deformable DETR and DETR on COCO-format data as a runtime task (``task = "coco_detection"``): the model
side; data and evaluation are the COCO family's (:mod:`detr2d.coco`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .builder import ModelConfig, build_criterion, build_model_from_config, model_config
from .coco import Batch, CocoData, CocoEvaluator, coco_class_names, targets_to
from .criterion import SetCriterion
from .detr import DETRConfig
from .finetune import init_from_checkpoint
from .layers.resnet import initialize_backbone
from .predictor import Predictor
from .runtime.task import Detections, Task

logger = logging.getLogger(__name__)


class CocoDetectionTask(Task):
    """Any detr2d variant (:data:`detr2d.VARIANTS`: Deformable DETR's five, DETR's four) trained and
    evaluated on COCO-format data.

    Config sections: ``model`` (a variant ``name`` plus fields of its family's config,
    :class:`detr2d.ModelConfig` or :class:`detr2d.DETRConfig`), ``criterion`` (fields of its family's
    criterion config, :class:`detr2d.CriterionConfig` or :class:`detr2d.DETRCriterionConfig`, but
    ``num_classes`` and ``decoder_layers``, which come from the model), and the COCO family's ``data`` /
    ``augment`` (:mod:`detr2d.coco`).
    """

    name = "coco_detection"
    data_class = CocoData
    evaluator_class = CocoEvaluator

    @classmethod
    def model_defaults(cls, name: str, **overrides: Any) -> dict[str, Any]:
        """The whole ``model`` section of variant ``name``: its name and every field of its family's config,
        ``overrides`` applied and validated (ValueError naming the field)."""
        return {"name": name, **dataclasses.asdict(model_config(name, **overrides))}

    @cached_property
    def model_config(self) -> ModelConfig | DETRConfig:
        return model_config(**self.config["model"])

    def build_model(self, pretrained: bool = False) -> nn.Module:
        model = build_model_from_config(self.model_config)
        if pretrained:
            report = initialize_backbone(model.backbone[0], self.model_config.pretrained)
            if report is not None:
                logger.info("%s", report)
        return model

    def build_criterion(self) -> SetCriterion:
        """The loss of the model's family (focal for Deformable DETR, softmax cross-entropy with
        ``eos_coef`` for DETR) with the config's ``criterion`` section on top.

        Raises:
            ValueError: a key the family's criterion config does not have, or a bad value (names it).
        """
        cfg = self.model_config
        try:
            return build_criterion(
                self.config["model"]["name"],
                num_classes=cfg.num_classes,
                decoder_layers=cfg.decoder_layers,
                **self.config["criterion"],
            )
        except ValueError as error:
            raise ValueError(f"criterion section: {error}") from error

    def num_classes(self) -> int:
        return self.model_config.num_classes

    def class_names(self) -> dict[int, str]:
        """See :func:`detr2d.coco.coco_class_names`."""
        return coco_class_names(self.config, self.model_config.num_classes)

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        return init_from_checkpoint(model, path).format()

    def split_batch(self, batch: Batch, device: torch.device) -> tuple[tuple[Any, ...], Any]:
        images, mask, targets = batch
        return (images.to(device), mask.to(device)), targets_to(targets, device)

    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[Batch, Detections]]:
        """Detections in original-image pixels (xyxy), top 100 per image (the post-processing of the model's
        family), through
        :meth:`detr2d.Predictor.detect` (also what ``Predictor(images)`` runs)."""
        predictor = Predictor(model, self.class_names(), device, amp=amp)
        for batch in loader:
            if batch is None:  # prediction inputs none of which could be read
                continue
            images, mask, targets = batch
            orig_sizes = torch.stack([target["orig_size"] for target in targets])
            yield batch, predictor.detect(images, mask, orig_sizes)
