"""Named PETR / PETRv2 variants as published (megvii-research/PETR ``projects/configs/petr*/``).

Common settings: C = 256, 8 heads, FFN 2048, dropout 0.1, 6 decoder layers, 900 queries, 64 LID depths
from 1 m, position_range [-61.2, -61.2, -10, 61.2, 61.2, 10], pc_range the nuScenes detection range
(``PC_RANGE``), top 300 boxes without NMS.

- ``petr_r50dcn_c5``: ResNet-50-DCN caffe (BN frozen, norm_eval, DCNv2 in layer3-4), C5 (2048 ch, stride
  32), no neck; 1408 x 512 images.
- ``petr_r50dcn_p4``: the same backbone, C4 + C5 -> :class:`bev.petr.CPFPN` -> P4 (stride 16).
- ``petr_vov_p4_800x320`` / ``petr_vov_p4_1600x640``: VoVNetV2-99-eSE stage4 + stage5 -> CPFPN -> P4.
- ``petrv2_vov_p4_800x320``: as PETR VoVNet P4 with 12 views (6 current + 6 earlier), feature-guided
  position encoder, grouped regression branches (six independent copies), velocity per second, code
  weights all 1. ``petrv2_vov_p4_1600x640``: the 1600 x 640 trainval config, 1500 queries.
- ``petr_demo`` / ``petrv2_demo``: our CPU-sized PETR / PETRv2 (ResNet-18 from scratch, C = 64), not
  published; they train on the synthetic nuScenes data.

PETR v1 shares one cls and one reg branch between all layers (its checkpoints repeat them six times).
:data:`PREPROCESS` holds each variant's test image size and normalization (BGR, mmcv ``to_rgb=False``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from detr2d.builder import BACKBONES, check_field_types, check_positive
from detr2d.layers.resnet import ResNetBackbone
from detr2d.layers.vovnet import VOVNET99_ESE, VoVNet, VoVNetSpec

from .box_coder import CODE_WEIGHTS, NMSFreeDecoder
from .loss import DetectionLoss3D
from .petr import CPFPN, PC_RANGE, PETR, POSITION_RANGE, PETRHead
from .projection import check_pc_range

#: PETRv2's code weights (PETR keeps the velocity at 0.2: ``bev.box_coder.CODE_WEIGHTS``).
CODE_WEIGHTS_V2 = (1.0,) * 10

#: Image backbones: the published ones, and torchvision-layout ResNets (pytorch style, our CPU demos).
PETR_BACKBONES = ("vovnet99", "r50dcn", *BACKBONES)
FEATURES = ("p4", "c5")


@dataclass(frozen=True)
class PETRModelConfig:
    """Every hyper-parameter of PETR / PETRv2; defaults are PETR VoVNet-99 P4's (the variants of
    :data:`VARIANTS` override them)."""

    backbone: str = "vovnet99"  # "vovnet99" | "r50dcn" (published) | resnet18/34/50/101 (pytorch style)
    feature: str = "p4"  # "p4": CPFPN over two levels, the head on the stride-16 output; "c5": no neck
    version: int = 1  # 1: PETR; 2: PETRv2 (12 views, fpe, grouped regression, time, independent branches)
    pretrained: str | None = None  # backbone weights a fresh training run loads (file, URL, torchvision://)
    frozen_stages: int = -1  # backbone stages (0: the stem) kept frozen; -1: none
    norm_eval: bool = True  # backbone batch norm fixed (mmdet norm_eval, affine frozen); False: trainable
    num_classes: int = 10  # the nuScenes detection classes
    embed_dims: int = 256
    num_heads: int = 8
    ffn_dims: int = 2048
    dropout: float = 0.1  # in [0, 1)
    decoder_layers: int = 6
    num_queries: int = 900
    num_depths: int = 64  # depth bins of the 3D frustum
    depth_start: float = 1.0  # m
    lid: bool = True  # linear-increasing depth bins (False: uniform)
    position_range: tuple[float, float, float, float, float, float] = POSITION_RANGE  # 3D coordinate range
    pc_range: tuple[float, float, float, float, float, float] = PC_RANGE  # box centre range (m, lidar)
    cams_per_frame: int = 6  # cameras per frame (PETRv2 reads two frames: 2 x this views)
    max_num: int = 300  # detections kept per sample
    size_divisor: int = 32  # images are zero-padded (bottom/right) to a multiple of this

    def __post_init__(self) -> None:
        check_field_types(self)
        check_positive(
            self,
            (
                "num_classes",
                "embed_dims",
                "num_heads",
                "ffn_dims",
                "decoder_layers",
                "num_queries",
                "num_depths",
                "cams_per_frame",
                "max_num",
                "size_divisor",
            ),
        )
        if self.backbone not in PETR_BACKBONES:
            raise ValueError(f"backbone must be one of {PETR_BACKBONES}, got {self.backbone!r}")
        if self.feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {self.feature!r}")
        if self.backbone == "vovnet99" and self.feature == "c5":
            raise ValueError("feature='c5' (no neck) is defined for the ResNets; the VoVNet variants read p4")
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 (PETR) or 2 (PETRv2), got {self.version!r}")
        if self.frozen_stages < -1:
            raise ValueError(f"frozen_stages must be -1 (none) or a stage >= 0, got {self.frozen_stages}")
        if self.embed_dims % self.num_heads != 0:
            raise ValueError(
                f"embed_dims ({self.embed_dims}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.depth_start <= 0:
            raise ValueError(f"depth_start must be positive (m), got {self.depth_start}")
        check_pc_range(self.pc_range)
        check_pc_range(self.position_range)

    @property
    def num_views(self) -> int:
        """Views per sample: the cameras of one frame (PETR) or of two (PETRv2)."""
        return self.cams_per_frame * self.version

    @property
    def code_weights(self) -> tuple[float, ...]:
        """The L1 weights of the 10-d code: PETR keeps the velocity at 0.2, PETRv2 weighs all 1."""
        return CODE_WEIGHTS_V2 if self.version == 2 else CODE_WEIGHTS


#: Our CPU-sized model (not published): ResNet-18 layer3 + layer4 from scratch (trainable batch norm) ->
#: CPFPN -> P4, C = 64, 3 decoder layers, 100 queries, 16 depth bins; trains on the synthetic data.
_DEMO: dict[str, Any] = {
    "backbone": "resnet18",
    "norm_eval": False,
    "embed_dims": 64,
    "num_heads": 4,
    "ffn_dims": 128,
    "dropout": 0.0,
    "decoder_layers": 3,
    "num_queries": 100,
    "num_depths": 16,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "petr_r50dcn_c5": {"backbone": "r50dcn", "feature": "c5"},
    "petr_r50dcn_p4": {"backbone": "r50dcn"},
    "petr_vov_p4_800x320": {},
    "petr_vov_p4_1600x640": {},
    "petrv2_vov_p4_800x320": {"version": 2},
    "petrv2_vov_p4_1600x640": {"version": 2, "num_queries": 1500},
    "petr_demo": _DEMO,
    "petrv2_demo": {**_DEMO, "version": 2},
}

_R50_NORM = {"mean": (103.53, 116.28, 123.675), "std": (1.0, 1.0, 1.0), "to_rgb": False}
_VOV_NORM = {"mean": (103.53, 116.28, 123.675), "std": (57.375, 57.12, 58.395), "to_rgb": False}
#: Test-time input (final (h, w) after resize + bottom/centre crop) and image normalization per published
#: variant.
PREPROCESS: dict[str, dict[str, Any]] = {
    "petr_r50dcn_c5": {"final_size": (512, 1408), **_R50_NORM},
    "petr_r50dcn_p4": {"final_size": (512, 1408), **_R50_NORM},
    "petr_vov_p4_800x320": {"final_size": (320, 800), **_VOV_NORM},
    "petr_vov_p4_1600x640": {"final_size": (640, 1600), **_VOV_NORM},
    "petrv2_vov_p4_800x320": {"final_size": (320, 800), **_VOV_NORM},
    "petrv2_vov_p4_1600x640": {"final_size": (640, 1600), **_VOV_NORM},
}


def petr_model_config(name: str, **overrides: Any) -> PETRModelConfig:
    """The config of variant ``name`` with ``overrides`` (any :class:`PETRModelConfig` field) applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown PETR model {name!r}; choose one of {sorted(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(PETRModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {name!r}; known: {sorted(fields)}")
    return PETRModelConfig(**{**VARIANTS[name], **overrides})


def _backbone(cfg: PETRModelConfig, vovnet_spec: VoVNetSpec) -> nn.Module:
    two_levels = cfg.feature == "p4"
    if cfg.backbone == "vovnet99":
        return VoVNet(vovnet_spec, ("stage4", "stage5"), cfg.frozen_stages, cfg.norm_eval)
    # mmdet ResNet (BN, requires_grad=False with norm_eval): r50dcn is caffe style with DCNv2 in stages 3-4.
    r50dcn = cfg.backbone == "r50dcn"
    return ResNetBackbone(
        50 if r50dcn else BACKBONES[cfg.backbone],
        ("layer3", "layer4") if two_levels else ("layer4",),
        norm="bn",
        trainable_layers=4 - cfg.frozen_stages,
        style="caffe" if r50dcn else "pytorch",
        stage_with_dcn=(False, False, True, True) if r50dcn else (False, False, False, False),
        norm_eval=cfg.norm_eval,
    )


def build_petr(
    name: str,
    *,
    backbone_module: nn.Module | None = None,
    vovnet_spec: VoVNetSpec = VOVNET99_ESE,
    **overrides: Any,
) -> PETR:
    """Build variant ``name`` (:data:`VARIANTS`), with any :class:`PETRModelConfig` field overridden.

    ``backbone_module``: a ready image backbone (with ``num_channels``) instead of the configured one;
    ``vovnet_spec``: the VoVNet's widths and depths (tests build tiny ones). Example (a tiny model):
    ``build_petr("petrv2_vov_p4_800x320", embed_dims=32, num_heads=4, ffn_dims=64, num_queries=20,
    num_depths=8, decoder_layers=2, vovnet_spec=...)``.
    """
    return build_petr_from_config(
        petr_model_config(name, **overrides), backbone_module=backbone_module, vovnet_spec=vovnet_spec
    )


def build_petr_from_config(
    cfg: PETRModelConfig, *, backbone_module: nn.Module | None = None, vovnet_spec: VoVNetSpec = VOVNET99_ESE
) -> PETR:
    """Instantiate the detector described by ``cfg`` (random init; backbone not pretrained)."""
    if backbone_module is not None and not hasattr(backbone_module, "num_channels"):
        raise ValueError("a given backbone must have a num_channels attribute (channels of each level)")
    backbone = backbone_module if backbone_module is not None else _backbone(cfg, vovnet_spec)
    channels = list(backbone.num_channels)
    neck = None
    if cfg.feature == "p4":
        if len(channels) != 2:
            raise ValueError(
                f"the P4 neck reads two backbone levels (stride 16, 32), got channels {channels}"
            )
        neck = CPFPN(channels, cfg.embed_dims)
    v2 = cfg.version == 2
    head = PETRHead(
        in_channels=cfg.embed_dims if neck is not None else channels[-1],
        num_classes=cfg.num_classes,
        embed_dims=cfg.embed_dims,
        num_queries=cfg.num_queries,
        num_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads,
        ffn_dims=cfg.ffn_dims,
        dropout=cfg.dropout,
        num_depths=cfg.num_depths,
        depth_start=cfg.depth_start,
        lid=cfg.lid,
        position_range=cfg.position_range,
        pc_range=cfg.pc_range,
        code_weights=cfg.code_weights,
        shared_branches=not v2,
        grouped_regression=v2,
        feature_guided=v2,
        with_time=v2,
    )
    return PETR(
        head,
        backbone,
        neck,
        NMSFreeDecoder(cfg.num_classes, max_num=cfg.max_num),
        num_views=cfg.num_views,
        size_divisor=cfg.size_divisor,
    )


def build_petr_criterion(name: str, **overrides: Any) -> DetectionLoss3D:
    """The published loss of variant ``name``: Hungarian matching (2.0 focal + 0.25 L1 on code[:8]),
    focal weight 2.0 and L1 weight 0.25 on every decoder layer, with the variant's code weights."""
    cfg = petr_model_config(name, **overrides)
    return DetectionLoss3D(cfg.num_classes, cfg.decoder_layers, code_weights=cfg.code_weights)
