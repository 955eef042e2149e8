"""The BEV detector of a config."""

from __future__ import annotations

from typing import Any

import torch

from bev import MultiViewDetector3D, build_bev_model


def build_bev_detector(config: dict[str, Any], device: torch.device) -> MultiViewDetector3D:
    """The detector of ``config["model"]`` on ``device``: a variant ``name`` of :data:`bev.VARIANTS` plus
    overrides of any :data:`bev.DEFAULTS` key (e.g. ``bev_h``, ``num_query``, ``backend``)."""
    settings = dict(config["model"])
    name = settings.pop("name")
    if isinstance(settings.get("return_layers"), list):
        settings["return_layers"] = tuple(settings["return_layers"])
    return build_bev_model(name, **settings).to(device)
