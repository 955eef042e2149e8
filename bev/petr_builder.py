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

PETR v1 shares one cls and one reg branch between all layers (its checkpoints repeat them six times).
:data:`PREPROCESS` holds each variant's test image size and normalization (BGR, mmcv ``to_rgb=False``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from detr2d.layers.resnet import ResNetBackbone

from .box_coder import CODE_WEIGHTS, NMSFreeDecoder
from .loss import DetectionLoss3D
from .petr import CPFPN, PC_RANGE, PETR, POSITION_RANGE, PETRHead
from .vovnet import VOVNET99_ESE, VoVNet

DEFAULTS: dict[str, Any] = {
    "backbone": "vovnet99",  # "vovnet99" | "r50dcn"
    "feature": "p4",  # "p4": CPFPN over two backbone levels, head on the stride-16 output; "c5": no neck
    "version": 1,  # 1: PETR; 2: PETRv2 (12 views, fpe, grouped regression, time, independent branches)
    "vovnet_spec": VOVNET99_ESE,
    "backbone_module": None,  # a ready backbone (with ``num_channels``) instead of the named one
    "frozen_stages": -1,
    "norm_eval": True,
    "num_classes": 10,
    "embed_dims": 256,
    "num_heads": 8,
    "ffn_dims": 2048,
    "dropout": 0.1,
    "decoder_layers": 6,
    "num_queries": 900,
    "num_depths": 64,
    "depth_start": 1.0,
    "lid": True,
    "position_range": POSITION_RANGE,
    "pc_range": PC_RANGE,
    "cams_per_frame": 6,
    "max_num": 300,
    "size_divisor": 32,
}

VARIANTS: dict[str, dict[str, Any]] = {
    "petr_r50dcn_c5": {"backbone": "r50dcn", "feature": "c5"},
    "petr_r50dcn_p4": {"backbone": "r50dcn"},
    "petr_vov_p4_800x320": {},
    "petr_vov_p4_1600x640": {},
    "petrv2_vov_p4_800x320": {"version": 2},
    "petrv2_vov_p4_1600x640": {"version": 2, "num_queries": 1500},
}

_R50_NORM = {"mean": (103.53, 116.28, 123.675), "std": (1.0, 1.0, 1.0), "to_rgb": False}
_VOV_NORM = {"mean": (103.53, 116.28, 123.675), "std": (57.375, 57.12, 58.395), "to_rgb": False}
#: Test-time input (final (h, w) after resize + bottom/centre crop) and image normalization per variant.
PREPROCESS: dict[str, dict[str, Any]] = {
    "petr_r50dcn_c5": {"final_size": (512, 1408), **_R50_NORM},
    "petr_r50dcn_p4": {"final_size": (512, 1408), **_R50_NORM},
    "petr_vov_p4_800x320": {"final_size": (320, 800), **_VOV_NORM},
    "petr_vov_p4_1600x640": {"final_size": (640, 1600), **_VOV_NORM},
    "petrv2_vov_p4_800x320": {"final_size": (320, 800), **_VOV_NORM},
    "petrv2_vov_p4_1600x640": {"final_size": (640, 1600), **_VOV_NORM},
}
#: PETRv2's code weights (PETR keeps the velocity at 0.2: ``bev.box_coder.CODE_WEIGHTS``).
CODE_WEIGHTS_V2 = (1.0,) * 10


def petr_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The full settings of variant ``name`` with ``overrides`` (keys of :data:`DEFAULTS`) applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown PETR model {name!r}; choose one of {sorted(VARIANTS)}")
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for {name!r}; known: {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **VARIANTS[name], **overrides}
    if s["backbone"] not in ("vovnet99", "r50dcn"):
        raise ValueError(f"backbone must be 'vovnet99' or 'r50dcn', got {s['backbone']!r}")
    if s["feature"] not in ("p4", "c5"):
        raise ValueError(f"feature must be 'p4' or 'c5', got {s['feature']!r}")
    if s["version"] not in (1, 2):
        raise ValueError(f"version must be 1 (PETR) or 2 (PETRv2), got {s['version']!r}")
    return s


def _backbone(s: dict[str, Any]) -> nn.Module:
    if s["backbone_module"] is not None:
        if not hasattr(s["backbone_module"], "num_channels"):
            raise ValueError("a given backbone must have a num_channels attribute (channels of each level)")
        return s["backbone_module"]
    if s["backbone"] == "vovnet99":
        if s["feature"] == "c5":
            raise ValueError("the VoVNet variants read P4; feature='c5' is defined for r50dcn only")
        return VoVNet(s["vovnet_spec"], ("stage4", "stage5"), s["frozen_stages"], s["norm_eval"])
    # mmdet ResNet-50 caffe, BN2d(requires_grad=False) + norm_eval, DCNv2 in stages 3-4, frozen_stages -1.
    backbone = ResNetBackbone(
        50,
        ("layer4",) if s["feature"] == "c5" else ("layer3", "layer4"),
        norm="bn",
        trainable_layers=5,
        style="caffe",
        stage_with_dcn=(False, False, True, True),
        norm_eval=s["norm_eval"],
    )
    return backbone


def build_petr(name: str, **overrides: Any) -> PETR:
    """Build variant ``name`` (:data:`VARIANTS`), with any :data:`DEFAULTS` key overridden.

    Example (a tiny model): ``build_petr("petrv2_vov_p4_800x320", embed_dims=32, num_heads=4,
    ffn_dims=64, num_queries=20, num_depths=8, decoder_layers=2, vovnet_spec=...)``.
    """
    s = petr_settings(name, **overrides)
    backbone = _backbone(s)
    channels = list(backbone.num_channels)
    neck = None
    if s["feature"] == "p4":
        if len(channels) != 2:
            raise ValueError(
                f"the P4 neck reads two backbone levels (stride 16, 32), got channels {channels}"
            )
        neck = CPFPN(channels, s["embed_dims"])
    v2 = s["version"] == 2
    head = PETRHead(
        in_channels=s["embed_dims"] if neck is not None else channels[-1],
        num_classes=s["num_classes"],
        embed_dims=s["embed_dims"],
        num_queries=s["num_queries"],
        num_layers=s["decoder_layers"],
        num_heads=s["num_heads"],
        ffn_dims=s["ffn_dims"],
        dropout=s["dropout"],
        num_depths=s["num_depths"],
        depth_start=s["depth_start"],
        lid=s["lid"],
        position_range=s["position_range"],
        pc_range=s["pc_range"],
        code_weights=CODE_WEIGHTS_V2 if v2 else CODE_WEIGHTS,
        shared_branches=not v2,
        grouped_regression=v2,
        feature_guided=v2,
        with_time=v2,
    )
    return PETR(
        head,
        backbone,
        neck,
        NMSFreeDecoder(s["num_classes"], max_num=s["max_num"]),
        num_views=s["cams_per_frame"] * (2 if v2 else 1),
        size_divisor=s["size_divisor"],
    )


def build_petr_criterion(name: str, **overrides: Any) -> DetectionLoss3D:
    """The published loss of variant ``name``: Hungarian matching (2.0 focal + 0.25 L1 on code[:8]),
    focal weight 2.0 and L1 weight 0.25 on every decoder layer, with the variant's code weights."""
    s = petr_settings(name, **overrides)
    weights = CODE_WEIGHTS_V2 if s["version"] == 2 else CODE_WEIGHTS
    return DetectionLoss3D(s["num_classes"], s["decoder_layers"], code_weights=weights)
