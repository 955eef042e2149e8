"""Multi-camera 3D detection: BEVFormer and DETR3D on the shared deformable attention op, and PETR /
PETRv2 (global attention with 3D position embeddings), as published.

Build a model with :func:`build_bev_model` (BEVFormer, DETR3D) or :func:`build_petr` (PETR, PETRv2);
the input contracts (batch keys and shapes) are in :mod:`bev.detector` and :mod:`bev.petr_task`;
released checkpoints load with :func:`load_official_checkpoint` / :func:`load_petr_checkpoint`.
"""

from detr2d.layers.fpn import FPNNeck

from .assigner import HungarianAssigner3D
from .box_coder import NMSFreeDecoder, decode_boxes, encode_boxes
from .builder import (
    VARIANTS,
    BEVModelConfig,
    bev_model_config,
    build_bev_criterion,
    build_bev_model,
    build_bev_model_from_config,
)
from .decoder import BEVDecoderLayer, BEVMemory, DetectionDecoder, HeadOutput
from .detector import MultiViewDetector3D
from .detr3d_head import CameraMemory, Detr3DCrossAttention, Detr3DDecoderLayer
from .encoder import BEVEncoder, BEVEncoderLayer
from .loss import DetectionLoss3D
from .official import load_official_checkpoint, official_key_map, official_state_dict
from .petr import CPFPN, PETR, PETRHead
from .petr_builder import (
    PETRModelConfig,
    build_petr,
    build_petr_criterion,
    build_petr_from_config,
    petr_model_config,
)
from .petr_official import load_petr_checkpoint, petr_key_map, petr_state_dict
from .projection import bev_cell_centers, bev_pillar_points, normalized_to_metric, project_to_cameras
from .spatial_cross_attention import SpatialCrossAttention
from .temporal_alignment import align_prev_bev, bev_shift, ego_motion_between, published_can_bus, rotate_bev
from .temporal_self_attention import TemporalSelfAttention, tsa_reference_points

__all__ = [
    "VARIANTS",
    "BEVDecoderLayer",
    "BEVEncoder",
    "BEVEncoderLayer",
    "BEVMemory",
    "BEVModelConfig",
    "CPFPN",
    "CameraMemory",
    "DetectionDecoder",
    "DetectionLoss3D",
    "Detr3DCrossAttention",
    "Detr3DDecoderLayer",
    "FPNNeck",
    "HeadOutput",
    "HungarianAssigner3D",
    "MultiViewDetector3D",
    "NMSFreeDecoder",
    "PETR",
    "PETRHead",
    "PETRModelConfig",
    "SpatialCrossAttention",
    "TemporalSelfAttention",
    "align_prev_bev",
    "bev_cell_centers",
    "bev_shift",
    "bev_model_config",
    "bev_pillar_points",
    "build_bev_criterion",
    "build_bev_model",
    "build_bev_model_from_config",
    "build_petr",
    "build_petr_criterion",
    "build_petr_from_config",
    "decode_boxes",
    "ego_motion_between",
    "encode_boxes",
    "load_official_checkpoint",
    "load_petr_checkpoint",
    "normalized_to_metric",
    "official_key_map",
    "official_state_dict",
    "petr_key_map",
    "petr_model_config",
    "petr_state_dict",
    "project_to_cameras",
    "published_can_bus",
    "rotate_bev",
    "tsa_reference_points",
]
