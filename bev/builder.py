"""Named model variants: BEVFormer tiny / small / base and DETR3D as published, and a CPU demo.

Published settings (BEVFormer ``projects/configs/bevformer/*.py``, DETR3D ``detr3d_res101_gridmask``):
C = 256, FFN 512, 8 heads, 900 queries, 6 decoder layers (4 points, 1 level), TSA 4 points, SCA 8
points over a 4-point pillar, pc_range [-51.2, -51.2, -5, 51.2, 51.2, 3].

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

from typing import Any

from torch import nn

from detr2d.builder import BACKBONES
from detr2d.layers.fpn import FPNNeck
from detr2d.layers.resnet import ResNetBackbone
from ops import MSDeformAttn

from .box_coder import NMSFreeDecoder
from .decoder import BEVDecoderLayer, DetectionDecoder
from .detector import MultiViewDetector3D
from .detr3d_head import Detr3DCrossAttention, Detr3DDecoderLayer
from .encoder import BEVEncoder
from .loss import DetectionLoss3D
from .spatial_cross_attention import SpatialCrossAttention
from .temporal_self_attention import TemporalSelfAttention

DEFAULTS: dict[str, Any] = {
    "head": "bev",  # "bev" (BEVFormer) or "detr3d"
    "backbone": "resnet50",  # resnet18 | resnet34 | resnet50 | resnet101
    "return_layers": ("layer4",),
    "num_levels": 1,
    "pretrained": None,  # backbone weights a fresh training run loads (file, URL, torchvision://resnetN)
    "train_backbone": True,
    "backbone_norm": "frozen_bn",  # "bn": trainable batch norm, for training from scratch
    "backbone_trainable_layers": 3,  # of (layer4, layer3, layer2, layer1, stem); 5 from scratch
    "backbone_style": "pytorch",  # "caffe": stride on the bottleneck's first 1x1 conv (mmdet caffe style)
    "backbone_dcn": (False, False, False, False),  # per layer1..4: conv2 is a modulated deformable conv
    "backbone_norm_eval": False,  # keep BatchNorm statistics fixed in training (mmdet norm_eval)
    "backbone_module": None,  # a ready image backbone (with ``num_channels``) instead of the ResNet
    "embed_dims": 256,
    "ffn_dims": 512,
    "num_heads": 8,
    "dropout": 0.1,
    "num_cams": 6,
    "size_divisor": 32,  # images are zero-padded (bottom/right) to a multiple of this
    "num_classes": 10,  # the nuScenes detection classes (datasets.nuscenes.constants.CLASS_NAMES)
    "pc_range": (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
    "bev_h": 50,
    "bev_w": 50,
    "encoder_layers": 3,
    "num_points_in_pillar": 4,
    "tsa_points": 4,
    "sca_points": 8,
    "decoder_layers": 6,
    "decoder_points": 4,
    "num_queries": 900,
    "num_query_groups": 1,  # Group DETR: query groups in training (1: published; test uses one group)
    "max_num": 300,
    "bev_pos_in_memory": False,  # True: the decoder reads BEV + positional embedding (published: bare BEV)
    "backend": None,
    "temporal_alignment": "published",  # or "planar": our warp of the previous BEV by the ego motion
    "use_can_bus": True,  # BEVFormer's can_bus_mlp output added to the BEV queries
    "can_bus_norm": True,  # can_bus_mlp ends in a LayerNorm
    "use_shift": True,  # published alignment: TSA history references shifted by the ego translation
    "rotate_prev_bev": True,  # published alignment: previous BEV rotated by the yaw change
    "rotate_center": (100.0, 100.0),  # BEVFormer's default, the grid centre only for 200 x 200
    "shift_current_refs": True,  # v1 quirk: the current entry's TSA references are shifted too
    "first_layer_current": True,  # v1 quirk: TSA's current entry is the first layer's input (with history)
    "level_embeds_rows": 4,  # v1: 4 rows whatever num_levels; None: num_levels
    "published_init": True,  # the transformer's init_weights: Xavier on every matrix, then the attentions'
}

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


def bev_model_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The full settings of variant ``name`` with ``overrides`` applied (keys of ``DEFAULTS``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown BEV model {name!r}; choose one of {sorted(VARIANTS)}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {name!r}; known: {sorted(DEFAULTS)}")
    settings = {**DEFAULTS, **VARIANTS[name], **overrides}
    if settings["head"] not in ("bev", "detr3d"):
        raise ValueError(f"head must be 'bev' or 'detr3d', got {settings['head']!r}")
    if settings["backbone_module"] is None and settings["backbone"] not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {settings['backbone']!r}")
    return settings


def _image_backbone(s: dict[str, Any]) -> nn.Module:
    if s["backbone_module"] is not None:
        if not hasattr(s["backbone_module"], "num_channels"):
            raise ValueError("a given backbone must have a num_channels attribute (channels of each level)")
        return s["backbone_module"]
    backbone = ResNetBackbone(
        BACKBONES[s["backbone"]],
        tuple(s["return_layers"]),
        train_backbone=s["train_backbone"],
        norm=s["backbone_norm"],
        trainable_layers=s["backbone_trainable_layers"],
        style=s["backbone_style"],
        stage_with_dcn=tuple(s["backbone_dcn"]),
        norm_eval=s["backbone_norm_eval"],
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


def build_bev_model(name: str, **overrides: Any) -> MultiViewDetector3D:
    """Build variant ``name`` (see :data:`VARIANTS`), with any :data:`DEFAULTS` key overridden.

    Example: ``build_bev_model("bev_demo", bev_h=10, bev_w=10, num_queries=20, backend="reference")``.
    """
    s = bev_model_settings(name, **overrides)
    backbone = _image_backbone(s)
    in_channels = list(backbone.num_channels)
    if s["num_levels"] < len(in_channels):
        raise ValueError(f"num_levels ({s['num_levels']}) is below the backbone's {len(in_channels)} levels")
    neck = FPNNeck(in_channels, s["embed_dims"], num_outs=s["num_levels"])
    c, heads, dropout, backend = s["embed_dims"], s["num_heads"], s["dropout"], s["backend"]
    encoder = None
    if s["head"] == "bev":
        encoder = BEVEncoder(
            s["bev_h"],
            s["bev_w"],
            s["pc_range"],
            embed_dims=c,
            num_layers=s["encoder_layers"],
            num_cams=s["num_cams"],
            num_levels=s["num_levels"],
            num_heads=heads,
            num_points_in_pillar=s["num_points_in_pillar"],
            tsa_points=s["tsa_points"],
            sca_points=s["sca_points"],
            ffn_dims=s["ffn_dims"],
            dropout=dropout,
            backend=backend,
            level_embeds_rows=s["level_embeds_rows"],
            use_can_bus=s["use_can_bus"],
            can_bus_norm=s["can_bus_norm"],
            temporal_alignment=s["temporal_alignment"],
            use_shift=s["use_shift"],
            rotate_prev_bev=s["rotate_prev_bev"],
            rotate_center=s["rotate_center"],
            shift_current_refs=s["shift_current_refs"],
            first_layer_current=s["first_layer_current"],
        )
        layers: list[nn.Module] = [
            BEVDecoderLayer(c, s["ffn_dims"], dropout, heads, s["decoder_points"], backend=backend)
            for _ in range(s["decoder_layers"])
        ]
    else:
        layers = [
            Detr3DDecoderLayer(
                c,
                s["num_cams"],
                s["num_levels"],
                s["pc_range"],
                num_heads=heads,
                ffn_dims=s["ffn_dims"],
                dropout=dropout,
                backend=backend,
            )
            for _ in range(s["decoder_layers"])
        ]
    head = DetectionDecoder(
        layers, s["num_classes"], c, s["num_queries"], s["pc_range"], num_groups=s["num_query_groups"]
    )
    if s["published_init"]:
        published_transformer_init(encoder, head)
    return MultiViewDetector3D(
        backbone,
        neck,
        head,
        NMSFreeDecoder(s["num_classes"], max_num=s["max_num"]),
        encoder=encoder,
        num_cams=s["num_cams"],
        size_divisor=s["size_divisor"],
        bev_pos_in_memory=s["bev_pos_in_memory"],
    )


def build_bev_criterion(name: str, **overrides: Any) -> DetectionLoss3D:
    """The training loss of variant ``name`` with ``overrides`` (its class and decoder-layer counts)."""
    s = bev_model_settings(name, **overrides)
    return DetectionLoss3D(s["num_classes"], s["decoder_layers"])
