"""2D detection: every published Deformable DETR and DETR variant, loading the official checkpoints
unchanged.

The names below are imported on first use (PEP 562), so that importing a submodule, e.g. the runtime
(``detr2d.runtime``, which imports no detector) or the shared layers (``detr2d.layers``), does not load
the detector.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "COCO_CLASSES": "classes",
    "class_names": "classes",
    "VARIANTS": "builder",
    "CriterionConfig": "builder",
    "ModelConfig": "builder",
    "build_criterion": "builder",
    "build_model": "builder",
    "build_model_from_config": "builder",
    "build_postprocess": "builder",
    "criterion_config": "builder",
    "model_config": "builder",
    "DETR": "detr",
    "DETRConfig": "detr",
    "DETRCriterionConfig": "detr",
    "DETRTransformer": "detr_transformer",
    "load_checkpoint": "runtime.checkpoint",
    "read_state_dict": "runtime.checkpoint",
    "save_model_state": "runtime.checkpoint",
    "DeformableDETR": "deformable_detr",
    "InitReport": "finetune",
    "init_from_checkpoint": "finetune",
    "Joiner": "backbone",
    "HungarianMatcher": "matcher",
    "PositionEmbeddingSine": "position_encoding",
    "PostProcess": "postprocess",
    "Predictor": "predictor",
    "SetCriterion": "criterion",
    "sigmoid_focal_loss": "layers.losses",
    "FrozenBatchNorm2d": "layers.resnet",
    "LoadReport": "layers.resnet",
    "ResNetBackbone": "layers.resnet",
    "check_initialization": "layers.resnet",
    "initialize_backbone": "layers.resnet",
    "load_pretrained": "layers.resnet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detr2d' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
