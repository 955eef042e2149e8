"""DETR (Carion et al., ECCV 2020) as published: R50, R50-DC5, R101, R101-DC5, official checkpoints unchanged.

One feature map (ResNet layer4, stride 32, or 16 with DC5) is projected by a 1x1 conv, encoded by a
dense post-norm transformer and decoded by 100 learned queries. Each query predicts ``num_classes + 1``
logits (softmax; the last one is "no object") and a sigmoid (cx, cy, w, h) box. Variants are named in
:data:`DETR_VARIANTS` and built by :func:`build_detr`; :func:`build_detr_criterion` gives the published
matching costs and loss weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import Joiner
from .criterion import SetCriterion, make_weight_dict
from .deformable_detr import MLP
from .detr_transformer import DETRTransformer
from .export import Detr2dForExport
from .layers.padding import PADDING_MODES, PaddingMasks, check_images_and_mask
from .layers.resnet import ARCHS, ResNetBackbone
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .schema import check_field_types, check_positive, make_config


class DETR(nn.Module):
    """The detector. Attribute order and names follow the official checkpoints.

    Args:
        backbone: ``Joiner(ResNetBackbone returning layer4 only, PositionEmbeddingSine(offset=0))``.
        transformer: the :class:`DETRTransformer`.
        num_classes: real classes K (91 for COCO: category ids are labels); the class head has K + 1
            logits, the last one "no object".
        num_queries: object queries Q.
        aux_loss: also return the outputs of the first D - 1 decoder layers.
        padding: ``"exact"`` (an image in a padded batch gets the predictions it gets alone: the ResNet
            zeroes padded inputs of its spatial layers, the feature mask is the image mask subsampled
            at stride 32 (16)) or ``"official"`` (the original's: the ResNet runs on the padded batch,
            the feature mask is the nearest-interpolated image mask). In both, padded cells are
            excluded from attention as keys. See :mod:`detr2d.layers.padding`; both agree on unpadded batches.

    Forward: ``model(images (B, 3, H, W), mask (B, H, W) bool True on padding)`` returns
    ``pred_logits`` (B, Q, K + 1), ``pred_boxes`` (B, Q, 4) normalized (cx, cy, w, h) of the valid
    image region and ``aux_outputs`` (list of D - 1 such dicts).
    """

    num_levels = 1  # one feature map (what the export wrapper reads)
    two_stage = False  # no encoder proposals

    def __init__(
        self,
        backbone: Joiner,
        transformer: DETRTransformer,
        num_classes: int = 91,
        num_queries: int = 100,
        aux_loss: bool = True,
        padding: str = "exact",
    ) -> None:
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        if len(backbone.num_channels) != 1:
            raise ValueError(f"DETR reads one backbone level, got {len(backbone.num_channels)}")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.padding = padding
        self.transformer = transformer
        d = transformer.embed_dims
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(num_queries, d)
        self.input_proj = nn.Conv2d(backbone.num_channels[0], d, kernel_size=1)
        self.backbone = backbone

    def for_export(
        self, image_size: tuple[int, int], batch: int = 1
    ) -> tuple[Detr2dForExport, tuple[Tensor]]:
        """The export graph of this model (:class:`detr2d.export.Detr2dForExport`: ``images`` (B, 3, H, W)
        -> ``pred_logits`` (B, Q, K + 1), ``pred_boxes`` (B, Q, 4)) and random example images (B, 3, H, W)
        of ``image_size`` (H, W)."""
        device = next(self.parameters()).device
        return Detr2dForExport(self), (torch.randn(batch, 3, *image_size, device=device),)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict:
        """Detect objects in a padded batch; see the class docstring for the outputs."""
        masks = PaddingMasks(check_images_and_mask(images, mask), self.padding, given=mask is not None)
        features, level_masks, pos = self.backbone(images, masks)
        key_mask = level_masks[0] if masks.has_padding else None
        hs = self.transformer(self.input_proj(features[0]), key_mask, self.query_embed.weight, pos[0])
        logits = self.class_embed(hs)  # (D, B, Q, K + 1)
        boxes = self.bbox_embed(hs).sigmoid()
        result: dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            result["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        return result


@dataclass(frozen=True)
class DETRConfig:
    """Every hyper-parameter of DETR; defaults are the published ones (R50, COCO)."""

    num_classes: int = 91  # real classes; the head adds "no object"
    num_queries: int = 100
    embed_dims: int = 256
    num_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dims: int = 2048
    dropout: float = 0.1
    backbone: str = "resnet50"
    dilation: bool = False  # DC5: layer4 dilated instead of strided (stride 16)
    train_backbone: bool = True
    backbone_norm: str = "frozen_bn"
    backbone_trainable_layers: int = 3  # layer2-4 learn, as in the original
    pretrained: str | None = None  # backbone weights loaded by a fresh training run
    aux_loss: bool = True
    padding: str = "exact"

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = (
            "num_classes",
            "num_queries",
            "embed_dims",
            "num_heads",
            "encoder_layers",
            "decoder_layers",
            "ffn_dims",
        )
        check_positive(self, positive)
        if self.backbone not in _BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(_BACKBONES)}, got {self.backbone!r}")
        if self.embed_dims % 2 != 0 or self.embed_dims % self.num_heads != 0:
            raise ValueError(
                f"embed_dims ({self.embed_dims}) must be even and divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


_BACKBONES = {f"resnet{depth}": depth for depth in ARCHS}

# The published variants (configs/detr2d/detr_*.py), as overrides of DETRConfig's defaults.
DETR_VARIANTS: dict[str, dict[str, Any]] = {
    "detr_r50": {},
    "detr_r50_dc5": {"dilation": True},
    "detr_r101": {"backbone": "resnet101"},
    "detr_r101_dc5": {"backbone": "resnet101", "dilation": True},
}


def detr_config(name: str = "detr_r50", **overrides: Any) -> DETRConfig:
    """The config of variant ``name`` with ``overrides`` (any :class:`DETRConfig` field) applied."""
    if name not in DETR_VARIANTS:
        raise ValueError(f"unknown DETR model {name!r}; choose one of {sorted(DETR_VARIANTS)}")
    return make_config(DETRConfig, "DETR overrides", {**DETR_VARIANTS[name], **overrides})


def build_detr_from_config(cfg: DETRConfig) -> DETR:
    """Instantiate the model described by ``cfg`` (random init; backbone not pretrained)."""
    resnet = ResNetBackbone(
        _BACKBONES[cfg.backbone],
        ("layer4",),
        cfg.dilation,
        cfg.train_backbone,
        norm=cfg.backbone_norm,
        trainable_layers=cfg.backbone_trainable_layers,
    )
    backbone = Joiner(resnet, PositionEmbeddingSine(cfg.embed_dims // 2, offset=0.0))
    transformer = DETRTransformer(
        embed_dims=cfg.embed_dims,
        num_heads=cfg.num_heads,
        num_encoder_layers=cfg.encoder_layers,
        num_decoder_layers=cfg.decoder_layers,
        ffn_dims=cfg.ffn_dims,
        dropout=cfg.dropout,
    )
    return DETR(backbone, transformer, cfg.num_classes, cfg.num_queries, cfg.aux_loss, cfg.padding)


def build_detr(name: str = "detr_r50", **overrides: Any) -> DETR:
    """Build a published DETR: ``build_detr('detr_r101_dc5')`` or ``build_detr('detr_r50', num_queries=50)``.

    Names: ``detr_r50``, ``detr_r50_dc5``, ``detr_r101``, ``detr_r101_dc5``. Overrides: any
    :class:`DETRConfig` field.
    """
    return build_detr_from_config(detr_config(name, **overrides))


@dataclass(frozen=True)
class DETRCriterionConfig:
    """DETR's published matching costs and loss weights (a config's ``criterion`` section for DETR)."""

    num_classes: int = 91  # real classes (the model's)
    decoder_layers: int = 6  # the model's (names the aux loss weights)
    set_cost_class: float = 1.0  # -softmax probability of the target class
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    cls_loss_coef: float = 1.0  # cross-entropy over num_classes + 1
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1  # cross-entropy weight of "no object"

    def __post_init__(self) -> None:
        check_field_types(self)
        check_positive(self, ("num_classes", "decoder_layers"))


def build_detr_criterion_from_config(cfg: DETRCriterionConfig) -> SetCriterion:
    """DETR's loss: matching cost ``set_cost_class * (-softmax prob) + set_cost_bbox * L1 + set_cost_giou *
    (-GIoU)``; weighted cross-entropy (``eos_coef`` on "no object"), L1 and GIoU on every decoder layer."""
    matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, class_cost="softmax")
    weights = make_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.decoder_layers)
    return SetCriterion(cfg.num_classes, matcher, weights, class_loss="softmax", eos_coef=cfg.eos_coef)


def build_detr_criterion(num_classes: int = 91, decoder_layers: int = 6, **overrides: Any) -> SetCriterion:
    """DETR's published loss (:func:`build_detr_criterion_from_config`); ``overrides``: any other
    :class:`DETRCriterionConfig` field. ``num_classes`` (real classes) and ``decoder_layers`` must equal
    the model's.
    """
    values = {"num_classes": num_classes, "decoder_layers": decoder_layers, **overrides}
    return build_detr_criterion_from_config(
        make_config(DETRCriterionConfig, "DETR criterion overrides", values)
    )
