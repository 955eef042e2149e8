"""Model, criterion and post-processor of a detr2d config."""

from __future__ import annotations

from typing import Any

import torch

from detr2d import (
    DeformableDETR,
    PostProcess,
    SetCriterion,
    build_criterion,
    build_model_from_config,
    model_config,
)


def build_detector(
    config: dict[str, Any], device: torch.device
) -> tuple[DeformableDETR, SetCriterion, PostProcess]:
    """``(model, criterion, postprocess)`` of a config, model and criterion on ``device``.

    ``config["model"]`` is a variant ``name`` plus overrides of :class:`detr2d.ModelConfig`;
    ``config["criterion"]`` overrides :class:`detr2d.CriterionConfig`, whose ``num_classes`` and
    ``dec_layers`` are taken from the model.
    """
    model_cfg = model_config(**config["model"])
    model = build_model_from_config(model_cfg).to(device)
    criterion = build_criterion(
        num_classes=model_cfg.num_classes, dec_layers=model_cfg.dec_layers, **config["criterion"]
    ).to(device)
    return model, criterion, PostProcess()
