"""Builders: the published variants as a table of config overrides, the criterion, the post-processor."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from .backbone import Joiner
from .criterion import SetCriterion, make_weight_dict
from .deformable_detr import DeformableDETR
from .layers.resnet import ResNetBackbone
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .transformer import DeformableTransformer

BACKBONES = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the annotation ``hint`` holds it (a list for a tuple, an int for a float); TypeError
    when it does not fit (a bool is never an int or a float)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
    elif hint is type(None):
        if value is None:
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            args = typing.get_args(hint)
            items = args[:1] * len(value) if args[1:] == (Ellipsis,) else args
            if len(items) == len(value):
                return tuple(_coerce(item, arg) for item, arg in zip(value, items, strict=True))
    elif not isinstance(value, bool) or hint is bool:
        if hint is float and isinstance(value, int | float):
            return float(value)
        if isinstance(value, hint):
            return value
    raise TypeError(hint)


def check_field_types(cfg: Any) -> None:
    """Check every field of the frozen dataclass ``cfg`` against its annotation, in place: lists become
    tuples where a tuple is annotated, ints floats where a float is.

    Raises:
        ValueError: the first field whose value does not fit, e.g. ``"bev_h must be int, got None"``.
    """
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        try:
            object.__setattr__(cfg, field.name, _coerce(value, hints[field.name]))
        except TypeError:
            raise ValueError(f"{field.name} must be {field.type}, got {value!r}") from None


def check_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """ValueError naming the first of the int fields ``names`` of ``cfg`` that is below 1."""
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


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


# The published variants, as overrides of ModelConfig's defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "deformable_detr": {},
    "deformable_detr_single_scale": {"num_levels": 1},
    "deformable_detr_single_scale_dc5": {"num_levels": 1, "dilation": True},
    "deformable_detr_refine": {"with_box_refine": True},
    "deformable_detr_two_stage": {"with_box_refine": True, "two_stage": True},
}


def model_config(name: str = "deformable_detr", **overrides: Any) -> ModelConfig:
    """The config of variant ``name`` with ``overrides`` (any :class:`ModelConfig` field) applied."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(VARIANTS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown overrides {unknown}; valid ones are {sorted(fields)}")
    return ModelConfig(**{**VARIANTS[name], **overrides})


def backbone_layers(num_levels: int) -> tuple[str, ...]:
    """ResNet layers feeding the levels: layer4 alone for one level, else the last of layer2-4."""
    if num_levels == 1:
        return ("layer4",)
    return ("layer2", "layer3", "layer4")[-min(num_levels, 3) :]


def build_model_from_config(cfg: ModelConfig) -> DeformableDETR:
    """Instantiate the model described by ``cfg`` (random init; backbone not pretrained)."""
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


def build_model(name: str = "deformable_detr", **overrides: Any) -> DeformableDETR:
    """Build a published variant, e.g. ``build_model('deformable_detr_refine', num_classes=2)``.

    Names: ``deformable_detr`` (multi-scale), ``deformable_detr_single_scale``,
    ``deformable_detr_single_scale_dc5``, ``deformable_detr_refine``, ``deformable_detr_two_stage``.
    Overrides: any :class:`ModelConfig` field (``num_classes``, ``num_queries``, ``embed_dims``,
    ``backbone``, ``encoder_layers``, ``decoder_layers``, ``ffn_dims``, ``dropout``, ``backend``...).
    """
    return build_model_from_config(model_config(name, **overrides))


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


def build_criterion(**overrides: Any) -> SetCriterion:
    """The :class:`SetCriterion` with the published costs/weights; overrides: :class:`CriterionConfig` fields.

    ``decoder_layers`` must equal the model's (it names the aux loss weights). ``forward`` returns raw
    terms; ``criterion.weighted_total(losses)`` is the training loss.
    """
    fields = {f.name for f in dataclasses.fields(CriterionConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown criterion overrides {unknown}; valid ones are {sorted(fields)}")
    cfg = CriterionConfig(**overrides)
    matcher = HungarianMatcher(
        cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou, cfg.focal_alpha, cfg.focal_gamma
    )
    weights = make_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef, cfg.decoder_layers)
    return SetCriterion(cfg.num_classes, matcher, weights, cfg.focal_alpha, cfg.focal_gamma)
