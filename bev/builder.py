"""Named model variants: BEVFormer tiny / small / base and DETR3D as published, and a CPU demo.

Published settings (BEVFormer ``projects/configs/bevformer/*.py``, DETR3D ``detr3d_res101_gridmask``):
C = 256, FFN 512, 8 heads, 900 queries, 6 decoder layers (4 points, 1 level), TSA 4 points, SCA 8
points over a 4-point pillar, ``pc_range`` :data:`datasets.nuscenes.constants.PC_RANGE`.

- tiny: ResNet-50 C5 only (1 level), BEV 50 x 50, 3 encoder layers; data: images x0.5 (800 x 450),
  queue of 3 frames. Published 35.4 NDS / 25.2 mAP.
- small: ResNet-101-DCN C5 only, BEV 150 x 150, 3 encoder layers; images x0.8, queue 3. 47.9 / 37.0.
- base: ResNet-101-DCN C3-C5 -> 4 FPN levels, BEV 200 x 200, 6 encoder layers; full images, queue 4.
  51.7 / 41.6.
- detr3d: ResNet-101-DCN C3-C5 -> 4 FPN levels, no BEV, one point per camera and level. 42.2 / 34.7.
- bev_demo: ResNet-18 C4-C5, C = 64, BEV 25 x 25, 2 encoder / 3 decoder layers, 100 queries: trains
  on the synthetic data on a 2-core CPU.

The four published variants are the published architectures: BEVFormer's CAN-bus MLP, rotation of the
previous BEV and shift of the temporal references, with the v1 release quirks its weights were trained
with (see :class:`bev.encoder.BEVEncoder`), mmdet's batch norm with ``norm_eval``, and state_dicts that
map one-to-one onto the released checkpoints (:mod:`bev.official`). Per-sample visibility and temporal
attention (batch > 1 equals batch 1 per sample) are always on. Our options (``num_query_groups``,
``bev_pos_in_memory``, ``temporal_alignment="planar"``, ``backbone_norm="bn"`` from scratch) are off in
them and on in ``bev_demo``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from datasets.nuscenes.constants import PC_RANGE
from detr2d.builder import BACKBONES, check_field_types, check_positive
from detr2d.layers.fpn import FPNNeck
from detr2d.layers.resnet import ResNetBackbone
from ops import MSDeformAttn

from .box_coder import NMSFreeDecoder
from .decoder import BEVDecoderLayer, DetectionDecoder
from .detector import MultiViewDetector3D
from .detr3d_head import Detr3DCrossAttention, Detr3DDecoderLayer
from .encoder import BEVEncoder
from .loss import DetectionLoss3D
from .projection import check_pc_range
from .spatial_cross_attention import SpatialCrossAttention
from .temporal_self_attention import TemporalSelfAttention

HEADS = ("bev", "detr3d")
TEMPORAL_ALIGNMENTS = ("published", "planar")


@dataclass(frozen=True)
class BEVModelConfig:
    """Every hyper-parameter of the BEV detector; defaults are BEVFormer-tiny's sizes with the published
    options (the variants of :data:`VARIANTS` override them)."""

    head: str = "bev"  # "bev" (BEVFormer) or "detr3d"
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    return_layers: tuple[str, ...] = ("layer4",)  # ResNet layers feeding the FPN
    num_levels: int = 1  # FPN outputs (at least the backbone's levels)
    pretrained: str | None = None  # backbone weights a fresh training run loads (file, URL, torchvision://)
    train_backbone: bool = True  # False freezes the whole ResNet
    backbone_norm: str = "frozen_bn"  # "bn": trainable batch norm, for training from scratch
    backbone_trainable_layers: int = 3  # of (layer4, layer3, layer2, layer1, stem); 5 from scratch
    backbone_style: str = "pytorch"  # "caffe": stride on the bottleneck's first 1x1 conv (mmdet caffe style)
    backbone_dcn: tuple[bool, bool, bool, bool] = (False, False, False, False)  # per layer1..4: modulated DCN
    backbone_norm_eval: bool = False  # keep BatchNorm statistics fixed in training (mmdet norm_eval)
    embed_dims: int = 256  # channels C of the FPN, BEV and queries
    ffn_dims: int = 512  # hidden width of the feed-forward blocks
    num_heads: int = 8  # attention heads
    dropout: float = 0.1  # in [0, 1)
    num_cams: int = 6  # cameras per frame
    size_divisor: int = 32  # images are zero-padded (bottom/right) to a multiple of this
    num_classes: int = 10  # the nuScenes detection classes (datasets.nuscenes.constants.CLASS_NAMES)
    pc_range: tuple[float, float, float, float, float, float] = PC_RANGE  # x/y/z min, x/y/z max (m, lidar)
    bev_h: int = 50  # BEV grid rows
    bev_w: int = 50  # BEV grid columns
    encoder_layers: int = 3  # BEV encoder layers (the detr3d head has no encoder)
    num_points_in_pillar: int = 4  # heights sampled per BEV cell by the spatial cross-attention
    tsa_points: int = 4  # temporal self-attention points per head
    sca_points: int = 8  # spatial cross-attention points per head, level and pillar
    decoder_layers: int = 6
    decoder_points: int = 4  # decoder sampling points per head
    num_queries: int = 900  # object queries
    num_query_groups: int = 1  # Group DETR: query groups in training (1: published; test uses one group)
    max_num: int = 300  # detections kept per sample
    bev_pos_in_memory: bool = False  # True: the decoder reads BEV + positional embedding (published: bare)
    backend: str | None = None  # deformable attention op backend: None = best available
    temporal_alignment: str = "published"  # or "planar": our warp of the previous BEV by the ego motion
    use_can_bus: bool = True  # BEVFormer's can_bus_mlp output added to the BEV queries
    can_bus_norm: bool = True  # can_bus_mlp ends in a LayerNorm
    use_shift: bool = True  # published alignment: TSA history references shifted by the ego translation
    rotate_prev_bev: bool = True  # published alignment: previous BEV rotated by the yaw change
    rotate_center: tuple[float, float] = (100.0, 100.0)  # BEVFormer's default, the grid centre only for 200
    shift_current_refs: bool = True  # v1 quirk: the current entry's TSA references are shifted too
    first_layer_current: bool = True  # v1 quirk: TSA's current entry is the first layer's input (+ history)
    level_embeds_rows: int | None = 4  # v1: 4 rows whatever num_levels; None: num_levels
    published_init: bool = True  # init_weights: Xavier on every matrix, then the attentions' own

    def __post_init__(self) -> None:
        check_field_types(self)
        check_positive(
            self,
            (
                "num_levels",
                "embed_dims",
                "ffn_dims",
                "num_heads",
                "num_cams",
                "size_divisor",
                "num_classes",
                "bev_h",
                "bev_w",
                "encoder_layers",
                "num_points_in_pillar",
                "tsa_points",
                "sca_points",
                "decoder_layers",
                "decoder_points",
                "num_queries",
                "num_query_groups",
                "max_num",
            ),
        )
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.temporal_alignment not in TEMPORAL_ALIGNMENTS:
            raise ValueError(
                f"temporal_alignment must be one of {TEMPORAL_ALIGNMENTS}, got {self.temporal_alignment!r}"
            )
        if self.embed_dims % self.num_heads != 0:
            raise ValueError(
                f"embed_dims ({self.embed_dims}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_pc_range(self.pc_range)


C3_C5 = ("layer2", "layer3", "layer4")
#: mmdet's ``BN`` with ``requires_grad=False, norm_eval=True`` (the released checkpoints' batch norms,
#: ``num_batches_tracked`` included).
PUBLISHED_NORM = {"backbone_norm": "bn", "backbone_norm_eval": True}
#: ResNet-101 caffe style with modulated deformable convs in layer3-4 (mmdet ``stage_with_dcn``).
R101_DCN = {
    **PUBLISHED_NORM,
    "backbone": "resnet101",
    "backbone_style": "caffe",
    "backbone_dcn": (False, False, True, True),
}
#: Our temporal alignment and none of the published quirks (the demo's model).
OURS = {
    "temporal_alignment": "planar",
    "use_can_bus": False,
    "shift_current_refs": False,
    "first_layer_current": False,
    "level_embeds_rows": None,
    "published_init": False,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "bevformer_tiny": {**PUBLISHED_NORM},
    "bevformer_small": {**R101_DCN, "bev_h": 150, "bev_w": 150},
    "bevformer_base": {
        **R101_DCN,
        "return_layers": C3_C5,
        "num_levels": 4,
        "bev_h": 200,
        "bev_w": 200,
        "encoder_layers": 6,
    },
    "detr3d": {"head": "detr3d", **R101_DCN, "return_layers": C3_C5, "num_levels": 4},
    "bev_demo": {
        **OURS,
        "backbone": "resnet18",
        "return_layers": ("layer3", "layer4"),
        "num_levels": 2,
        "embed_dims": 64,
        "ffn_dims": 128,
        "num_heads": 4,
        "bev_h": 25,
        "bev_w": 25,
        "encoder_layers": 2,
        "sca_points": 4,
        "decoder_layers": 3,
        "num_queries": 100,
    },
}


def bev_model_config(name: str, **overrides: Any) -> BEVModelConfig:
    """The config of variant ``name`` with ``overrides`` (any :class:`BEVModelConfig` field) applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown BEV model {name!r}; choose one of {sorted(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(BEVModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {name!r}; known: {sorted(fields)}")
    return BEVModelConfig(**{**VARIANTS[name], **overrides})


def _image_backbone(cfg: BEVModelConfig, backbone_module: nn.Module | None) -> nn.Module:
    if backbone_module is not None:
        if not hasattr(backbone_module, "num_channels"):
            raise ValueError("a given backbone must have a num_channels attribute (channels of each level)")
        return backbone_module
    backbone = ResNetBackbone(
        BACKBONES[cfg.backbone],
        cfg.return_layers,
        train_backbone=cfg.train_backbone,
        norm=cfg.backbone_norm,
        trainable_layers=cfg.backbone_trainable_layers,
        style=cfg.backbone_style,
        stage_with_dcn=cfg.backbone_dcn,
        norm_eval=cfg.backbone_norm_eval,
    )
    return backbone


def published_transformer_init(encoder: BEVEncoder | None, head: DetectionDecoder) -> None:
    """BEVFormer's / DETR3D's ``transformer.init_weights()``: Xavier-uniform on every matrix of the encoder
    and decoder layers (FFNs, attention projections, DETR3D's position encoder), then each deformable
    attention's own init; the embeddings, ``reference_points`` and ``can_bus_mlp`` are already
    initialized as published by their modules."""
    layers = [*head.layers, *([] if encoder is None else encoder.layers)]
    for layer in layers:
        for parameter in layer.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in layer.modules():
            if isinstance(module, (TemporalSelfAttention, SpatialCrossAttention, MSDeformAttn)):
                module.reset_parameters()
            elif isinstance(module, Detr3DCrossAttention):
                nn.init.zeros_(module.attention_weights.weight)
                nn.init.zeros_(module.attention_weights.bias)
                nn.init.zeros_(module.output_proj.bias)


def build_bev_model(
    name: str, *, backbone_module: nn.Module | None = None, **overrides: Any
) -> MultiViewDetector3D:
    """Build variant ``name`` (see :data:`VARIANTS`), with any :class:`BEVModelConfig` field overridden.

    Example: ``build_bev_model("bev_demo", bev_h=10, bev_w=10, num_queries=20, backend="reference")``.
    ``backbone_module``: a ready image backbone (with ``num_channels``, one entry per level) instead of
    the configured ResNet.
    """
    return build_bev_model_from_config(bev_model_config(name, **overrides), backbone_module=backbone_module)


def build_bev_model_from_config(
    cfg: BEVModelConfig, *, backbone_module: nn.Module | None = None
) -> MultiViewDetector3D:
    """Instantiate the detector described by ``cfg`` (random init; backbone not pretrained)."""
    backbone = _image_backbone(cfg, backbone_module)
    in_channels = list(backbone.num_channels)
    if cfg.num_levels < len(in_channels):
        raise ValueError(f"num_levels ({cfg.num_levels}) is below the backbone's {len(in_channels)} levels")
    neck = FPNNeck(in_channels, cfg.embed_dims, num_outs=cfg.num_levels)
    c, heads, dropout, backend = cfg.embed_dims, cfg.num_heads, cfg.dropout, cfg.backend
    encoder = None
    if cfg.head == "bev":
        encoder = BEVEncoder(
            cfg.bev_h,
            cfg.bev_w,
            cfg.pc_range,
            embed_dims=c,
            num_layers=cfg.encoder_layers,
            num_cams=cfg.num_cams,
            num_levels=cfg.num_levels,
            num_heads=heads,
            num_points_in_pillar=cfg.num_points_in_pillar,
            tsa_points=cfg.tsa_points,
            sca_points=cfg.sca_points,
            ffn_dims=cfg.ffn_dims,
            dropout=dropout,
            backend=backend,
            level_embeds_rows=cfg.level_embeds_rows,
            use_can_bus=cfg.use_can_bus,
            can_bus_norm=cfg.can_bus_norm,
            temporal_alignment=cfg.temporal_alignment,
            use_shift=cfg.use_shift,
            rotate_prev_bev=cfg.rotate_prev_bev,
            rotate_center=cfg.rotate_center,
            shift_current_refs=cfg.shift_current_refs,
            first_layer_current=cfg.first_layer_current,
        )
        layers: list[nn.Module] = [
            BEVDecoderLayer(c, cfg.ffn_dims, dropout, heads, cfg.decoder_points, backend=backend)
            for _ in range(cfg.decoder_layers)
        ]
    else:
        layers = [
            Detr3DDecoderLayer(
                c,
                cfg.num_cams,
                cfg.num_levels,
                cfg.pc_range,
                num_heads=heads,
                ffn_dims=cfg.ffn_dims,
                dropout=dropout,
                backend=backend,
            )
            for _ in range(cfg.decoder_layers)
        ]
    head = DetectionDecoder(
        layers, cfg.num_classes, c, cfg.num_queries, cfg.pc_range, num_groups=cfg.num_query_groups
    )
    if cfg.published_init:
        published_transformer_init(encoder, head)
    return MultiViewDetector3D(
        backbone,
        neck,
        head,
        NMSFreeDecoder(cfg.num_classes, max_num=cfg.max_num),
        encoder=encoder,
        num_cams=cfg.num_cams,
        size_divisor=cfg.size_divisor,
        bev_pos_in_memory=cfg.bev_pos_in_memory,
    )


def build_bev_criterion(name: str, **overrides: Any) -> DetectionLoss3D:
    """The training loss of variant ``name`` with ``overrides`` (its class and decoder-layer counts)."""
    cfg = bev_model_config(name, **overrides)
    return DetectionLoss3D(cfg.num_classes, cfg.decoder_layers)
