"""Builders: every published variant (Deformable DETR and DETR) in one table, name -> family (config
schema, model builder, criterion schema and builder, post-processing score), and the generic builders
that dispatch through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .backbone import Joiner
from .criterion import SetCriterion, make_weight_dict
from .deformable_detr import CLASS_PRIOR_BIAS, DeformableDETR
from .detr import (
    DETR,
    DETR_VARIANTS,
    DETRConfig,
    DETRCriterionConfig,
    build_detr_criterion_from_config,
    build_detr_from_config,
)
from .layers.resnet import ResNetBackbone
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .postprocess import PostProcess
from .schema import check_field_types, check_positive, make_config
from .transformer import DeformableTransformer

BACKBONES = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


@dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter of the model; defaults are the published ones (R50, COCO)."""

    num_classes: int = 91  # class logits; COCO category ids are the labels (max id 90)
    num_queries: int = 300  # object queries (two-stage: proposals kept)
    embed_dims: int = 256  # transformer width C
    num_heads: int = 8  # attention heads
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dims: int = 1024  # hidden width of the feed-forward blocks
    dropout: float = 0.1  # in [0, 1)
    encoder_points: int = 4  # sampling points per head and level in the encoder
    decoder_points: int = 4  # sampling points per head and level in the decoder
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    dilation: bool = False  # dilated C5 (DC5, stride 16)
    train_backbone: bool = True  # False freezes the whole ResNet
    backbone_norm: str = "frozen_bn"  # "bn": trainable batch norm, for training from scratch
    backbone_trainable_layers: int = 3  # of (layer4, layer3, layer2, layer1, stem); 5 from scratch
    pretrained: str | None = None  # backbone weights a fresh training run loads (file, URL, torchvision://)
    num_levels: int = 4  # feature levels (1: C5 alone)
    with_box_refine: bool = False  # iterative bounding box refinement
    two_stage: bool = False  # encoder proposals as queries (needs with_box_refine)
    aux_loss: bool = True  # a loss on every decoder layer's output
    backend: str | None = None  # deformable attention op backend: None = best available
    padding: str = "exact"  # "official": the original's padded-batch behaviour (see detr2d.layers.padding)

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
            "encoder_points",
            "decoder_points",
            "num_levels",
        )
        check_positive(self, positive)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        if self.embed_dims % 32 != 0:
            raise ValueError(f"embed_dims must be a multiple of 32 (GroupNorm groups), got {self.embed_dims}")
        if self.embed_dims % self.num_heads != 0:
            raise ValueError(
                f"embed_dims ({self.embed_dims}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage requires with_box_refine (as in the official release)")


# The published Deformable DETR variants, as overrides of ModelConfig's defaults.
DEFORMABLE_VARIANTS: dict[str, dict[str, Any]] = {
    "deformable_detr": {},
    "deformable_detr_single_scale": {"num_levels": 1},
    "deformable_detr_single_scale_dc5": {"num_levels": 1, "dilation": True},
    "deformable_detr_refine": {"with_box_refine": True},
    "deformable_detr_two_stage": {"with_box_refine": True, "two_stage": True},
}


def backbone_layers(num_levels: int) -> tuple[str, ...]:
    """ResNet layers feeding the levels: layer4 alone for one level, else the last of layer2-4."""
    if num_levels == 1:
        return ("layer4",)
    return ("layer2", "layer3", "layer4")[-min(num_levels, 3) :]


def build_deformable_detr_from_config(cfg: ModelConfig) -> DeformableDETR:
    """Instantiate the Deformable DETR described by ``cfg`` (random init; backbone not pretrained)."""
    resnet = ResNetBackbone(
        BACKBONES[cfg.backbone],
        backbone_layers(cfg.num_levels),
        cfg.dilation,
        cfg.train_backbone,
        norm=cfg.backbone_norm,
        trainable_layers=cfg.backbone_trainable_layers,
    )
    backbone = Joiner(resnet, PositionEmbeddingSine(cfg.embed_dims // 2))
    transformer = DeformableTransformer(
        embed_dims=cfg.embed_dims,
        num_heads=cfg.num_heads,
        num_encoder_layers=cfg.encoder_layers,
        num_decoder_layers=cfg.decoder_layers,
        ffn_dims=cfg.ffn_dims,
        dropout=cfg.dropout,
        num_levels=cfg.num_levels,
        decoder_points=cfg.decoder_points,
        encoder_points=cfg.encoder_points,
        two_stage=cfg.two_stage,
        two_stage_num_proposals=cfg.num_queries,
        backend=cfg.backend,
    )
    return DeformableDETR(
        backbone,
        transformer,
        num_classes=cfg.num_classes,
        num_queries=cfg.num_queries,
        num_levels=cfg.num_levels,
        aux_loss=cfg.aux_loss,
        with_box_refine=cfg.with_box_refine,
        padding=cfg.padding,
    )


@dataclass(frozen=True)
class CriterionConfig:
    """Matching costs and loss weights of the published recipe."""

    num_classes: int = 91
    decoder_layers: int = 6
    set_cost_class: float = 2.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        check_field_types(self)
        check_positive(self, ("num_classes", "decoder_layers"))


def build_deformable_criterion_from_config(cfg: CriterionConfig) -> SetCriterion:
    """Deformable DETR's loss: focal class cost and loss, L1 and GIoU, on every decoder layer."""
    matcher = HungarianMatcher(
        cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.focal_alpha, cfg.focal_gamma
    )
    weights = make_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.decoder_layers)
    return SetCriterion(cfg.num_classes, matcher, weights, cfg.focal_alpha, cfg.focal_gamma)


@dataclass(frozen=True)
class Family:
    """A detector family: what every variant of it is built from.

    Attributes:
        model: the detector class.
        config: the model config schema (a frozen dataclass; a config's ``model`` section).
        build: ``config -> model`` (random init).
        criterion: the criterion schema (a frozen dataclass; a config's ``criterion`` section plus
            ``num_classes`` and ``decoder_layers``, which come from the model).
        build_criterion: ``criterion config -> SetCriterion``.
        score: the post-processing's class score (:class:`PostProcess`): ``"sigmoid"`` (focal head, K
            logits) or ``"softmax"`` (K + 1 logits, the last one "no object").
        variants: the published variants, name -> overrides of ``config``'s defaults.
    """

    model: type[nn.Module]
    config: type
    build: Callable[[Any], nn.Module]
    criterion: type
    build_criterion: Callable[[Any], SetCriterion]
    score: str
    variants: dict[str, dict[str, Any]]

    @property
    def extra_logits(self) -> int:
        """Class-head logits beyond the real classes: 1 ("no object") for softmax, else 0."""
        return 1 if self.score == "softmax" else 0

    @property
    def class_bias(self) -> float | None:
        """The class head's initial bias (the focal prior), None for PyTorch's Linear init."""
        return CLASS_PRIOR_BIAS if self.score == "sigmoid" else None


FAMILIES: tuple[Family, ...] = (
    Family(
        DeformableDETR,
        ModelConfig,
        build_deformable_detr_from_config,
        CriterionConfig,
        build_deformable_criterion_from_config,
        "sigmoid",
        DEFORMABLE_VARIANTS,
    ),
    Family(
        DETR,
        DETRConfig,
        build_detr_from_config,
        DETRCriterionConfig,
        build_detr_criterion_from_config,
        "softmax",
        DETR_VARIANTS,
    ),
)

#: The one dispatch table: variant name -> its family.
MODELS: dict[str, Family] = {name: fam for fam in FAMILIES for name in fam.variants}
#: Every published variant, name -> overrides of its family's config defaults.
VARIANTS: dict[str, dict[str, Any]] = {name: MODELS[name].variants[name] for name in MODELS}


def family(name: str) -> Family:
    """The family of variant ``name``; ValueError listing the variants if there is none."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def family_of(obj: Any) -> Family:
    """The family of a model or of a model / criterion config; TypeError for anything else."""
    for candidate in FAMILIES:
        if isinstance(obj, candidate.model | candidate.config | candidate.criterion):
            return candidate
    raise TypeError(
        f"{type(obj).__name__} is not a detr2d model or config; known: {[f.model.__name__ for f in FAMILIES]}"
    )


def model_config(name: str = "deformable_detr", **overrides: Any) -> ModelConfig | DETRConfig:
    """The config of variant ``name`` (its family's schema) with ``overrides`` (any of its fields) applied."""
    return make_config(family(name).config, "overrides", {**VARIANTS[name], **overrides})


def build_model_from_config(cfg: ModelConfig | DETRConfig) -> nn.Module:
    """Instantiate the model described by ``cfg`` (random init; backbone not pretrained)."""
    return family_of(cfg).build(cfg)


def build_model(name: str = "deformable_detr", **overrides: Any) -> nn.Module:
    """Build a published variant, e.g. ``build_model('deformable_detr_refine', num_classes=2)`` or
    ``build_model('detr_r50_dc5')``.

    Names: ``deformable_detr`` (multi-scale), ``deformable_detr_single_scale``,
    ``deformable_detr_single_scale_dc5``, ``deformable_detr_refine``, ``deformable_detr_two_stage``
    (:class:`ModelConfig`); ``detr_r50``, ``detr_r50_dc5``, ``detr_r101``, ``detr_r101_dc5``
    (:class:`detr2d.detr.DETRConfig`). Overrides: any field of the variant's config (``num_classes``,
    ``num_queries``, ``embed_dims``, ``backbone``, ``encoder_layers``, ``decoder_layers``, ``ffn_dims``...).
    """
    return build_model_from_config(model_config(name, **overrides))


def criterion_config(name: str = "deformable_detr", **values: Any) -> CriterionConfig | DETRCriterionConfig:
    """The criterion config of variant ``name``'s family: its published costs and weights with ``values``
    (any of its fields) on top; ValueError naming unknown keys or a bad value."""
    return make_config(family(name).criterion, "criterion overrides", values)


def build_criterion(name: str = "deformable_detr", **overrides: Any) -> SetCriterion:
    """The :class:`SetCriterion` of variant ``name``'s family with the published costs/weights; overrides:
    fields of its criterion config (:class:`CriterionConfig`, :class:`detr2d.detr.DETRCriterionConfig`).

    ``num_classes`` and ``decoder_layers`` must equal the model's (the latter names the aux loss
    weights). ``forward`` returns raw terms; ``criterion.weighted_total(losses)`` is the training loss.
    """
    cfg = criterion_config(name, **overrides)
    return family_of(cfg).build_criterion(cfg)


def build_postprocess(model: nn.Module, num_select: int = 100) -> PostProcess:
    """The post-processing of ``model``'s family (its class score), keeping ``num_select`` per image."""
    return PostProcess(num_select, score=family_of(model).score)
