"""Deformable DETR (2D): every published variant, loading the official checkpoints unchanged."""

from .backbone import (
    FrozenBatchNorm2d,
    Joiner,
    LoadReport,
    ResNetBackbone,
    check_initialization,
    initialize_backbone,
    load_pretrained,
)
from .builder import (
    VARIANTS,
    CriterionConfig,
    ModelConfig,
    build_criterion,
    build_model,
    build_model_from_config,
    model_config,
)
from .checkpoint import load_checkpoint, read_state_dict, save_model_state
from .classes import COCO_CLASSES, class_names
from .criterion import SetCriterion, sigmoid_focal_loss
from .deformable_detr import DeformableDETR
from .finetune import InitReport, init_from_checkpoint
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .postprocess import PostProcess
from .predictor import Predictor

__all__ = [
    "COCO_CLASSES",
    "VARIANTS",
    "CriterionConfig",
    "DeformableDETR",
    "FrozenBatchNorm2d",
    "HungarianMatcher",
    "InitReport",
    "Joiner",
    "LoadReport",
    "ModelConfig",
    "PositionEmbeddingSine",
    "PostProcess",
    "Predictor",
    "ResNetBackbone",
    "SetCriterion",
    "build_criterion",
    "build_model",
    "build_model_from_config",
    "class_names",
    "init_from_checkpoint",
    "load_checkpoint",
    "check_initialization",
    "initialize_backbone",
    "load_pretrained",
    "model_config",
    "read_state_dict",
    "save_model_state",
    "sigmoid_focal_loss",
]
