"""Deformable DETR (Zhu et al., ICLR 2021): single-scale, DC5, multi-scale, +refinement, +two-stage."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Joiner
from .export import Detr2dForExport
from .layers.box_ops import apply_box_delta
from .layers.padding import PADDING_MODES, MaskedGroupNorm, PaddingMasks, check_images_and_mask
from .transformer import DeformableTransformer

# Initial bias of the class logits: sigmoid(bias) = 0.01, the focal-loss prior.
CLASS_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


class MLP(nn.Module):
    """``num_layers`` linear layers (checkpoint names ``layers.{i}``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class InputProjection(nn.Sequential):
    """Conv2d + GroupNorm(32) mapping a feature map to the model width (names ``0``, ``1``).

    With exact padding, padded inputs are zeroed before the convolution and the norm ignores
    padded positions; with official padding both see the padded batch as it is.
    """

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int = 1, stride: int = 1) -> None:
        conv = nn.Conv2d(in_channels, embed_dims, kernel_size, stride=stride, padding=kernel_size // 2)
        nn.init.xavier_uniform_(conv.weight, gain=1)
        nn.init.zeros_(conv.bias)
        super().__init__(conv, MaskedGroupNorm(32, embed_dims))

    def forward(self, x: Tensor, masks: PaddingMasks) -> tuple[Tensor, Tensor]:
        """(B, C_in, H, W) -> (B, embed_dims, H', W') and its (B, H', W') padding mask."""
        y = self[0](masks.zero(x))
        return self[1](y, masks.norm_mask(y.shape[-2:])), masks.at(y.shape[-2:])


class DeformableDETR(nn.Module):
    """The detector. Attribute order and names follow the official checkpoints.

    Args:
        backbone: ``Joiner(ResNetBackbone, PositionEmbeddingSine)``.
        transformer: the deformable transformer (its ``two_stage`` flag selects two-stage).
        num_classes: logits per query (91 for COCO: category ids are labels; sigmoid, no background).
        num_queries: object queries Q (also the number of two-stage proposals).
        num_levels: levels L; levels beyond the backbone's come from stride-2 3x3 convs.
        aux_loss: also return the outputs of the first D - 1 decoder layers.
        with_box_refine: iterative box refinement (independent heads per decoder layer).
        padding: ``"exact"`` (an image in a padded batch gets the predictions it gets alone) or
            ``"official"`` (the original's: the backbone and input projections see the padded batch,
            level masks by nearest interpolation; the published numbers were measured so). See
            :mod:`detr2d.layers.padding`; both agree on unpadded batches.

    Forward: ``model(images (B, 3, H, W), mask (B, H, W) bool True on padding)`` returns
    ``pred_logits`` (B, Q, num_classes), ``pred_boxes`` (B, Q, 4) normalized (cx, cy, w, h) of the
    valid image region, ``aux_outputs`` (list of D - 1 such dicts) and, for two-stage,
    ``enc_outputs`` (dict with (B, S, num_classes) logits and (B, S, 4) boxes of every encoder cell).
    """

    def __init__(
        self,
        backbone: Joiner,
        transformer: DeformableTransformer,
        num_classes: int,
        num_queries: int,
        num_levels: int,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        padding: str = "exact",
    ) -> None:
        super().__init__()
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        two_stage = transformer.two_stage
        if two_stage and not with_box_refine:
            raise ValueError("two_stage requires with_box_refine (as in the official release)")
        n_backbone = len(backbone.num_channels)
        if num_levels < n_backbone:
            raise ValueError(f"num_levels ({num_levels}) < backbone levels ({n_backbone})")
        self.num_queries = num_queries
        self.num_levels = num_levels
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.padding = padding
        self.transformer = transformer
        d = transformer.embed_dims
        num_layers = transformer.decoder.num_layers
        num_pred = num_layers + 1 if two_stage else num_layers

        class_embed = nn.Linear(d, num_classes)
        nn.init.constant_(class_embed.bias, CLASS_PRIOR_BIAS)
        bbox_embed = MLP(d, d, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        if with_box_refine:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
        else:  # one shared module under every index, as the official checkpoints store it
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if not two_stage:
            # first boxes start small (sigmoid(-2) = 0.12 of the image); two-stage starts from proposals
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.query_embed = nn.Embedding(num_queries, 2 * d)

        projections = [InputProjection(c, d) for c in backbone.num_channels]
        in_ch = backbone.num_channels[-1]
        for _ in range(num_levels - n_backbone):
            projections.append(InputProjection(in_ch, d, kernel_size=3, stride=2))
            in_ch = d
        self.input_proj = nn.ModuleList(projections)
        self.backbone = backbone

        if with_box_refine:
            transformer.decoder.attach_heads(self.bbox_embed, self.class_embed if two_stage else None)

    def for_export(
        self, image_size: tuple[int, int], batch: int = 1
    ) -> tuple[Detr2dForExport, tuple[Tensor]]:
        """The export graph of this model (:class:`detr2d.export.Detr2dForExport`) and random example
        images (B, 3, H, W) of ``image_size`` (H, W)."""
        device = next(self.parameters()).device
        return Detr2dForExport(self), (torch.randn(batch, 3, *image_size, device=device),)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> dict:
        """Detect objects in a padded batch; see the class docstring for the outputs."""
        masks = PaddingMasks(check_images_and_mask(images, mask), self.padding, given=mask is not None)
        features, level_masks, pos = self.backbone(images, masks)
        srcs = []
        for lvl, proj in enumerate(self.input_proj):
            if lvl < len(features):
                src, _ = proj(features[lvl], masks)
            else:  # extra level: stride-2 conv on the raw last backbone map, then on the previous level
                src, level_mask = proj(features[-1] if lvl == len(features) else srcs[-1], masks)
                level_masks.append(level_mask)
                pos.append(self.backbone[1](level_mask).to(src.dtype))
            srcs.append(src)
        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(srcs, level_masks, pos, query_embed, padding=self.padding)

        logits, boxes = [], []
        for lvl in range(out.hs.shape[0]):
            reference = out.init_reference if lvl == 0 else out.inter_references[lvl - 1]
            logits.append(self.class_embed[lvl](out.hs[lvl]))
            boxes.append(apply_box_delta(self.bbox_embed[lvl](out.hs[lvl]), reference))
        result: dict = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            result["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1], strict=True)
            ]
        if self.two_stage:
            result["enc_outputs"] = {
                "pred_logits": out.enc_outputs_class,
                "pred_boxes": out.enc_outputs_coord_unact.sigmoid(),
            }
        return result
