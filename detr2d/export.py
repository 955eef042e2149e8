"""The Deformable DETR graph for export (:mod:`detr2d.runtime.export` writes it).

``images`` (B, 3, H, W), unpadded and normalized as for the eager model -> ``pred_logits`` (B, Q, K) and
``pred_boxes`` (B, Q, 4) normalized (cx, cy, w, h): what :class:`detr2d.PostProcess` takes. The graphs
leave B, H and W free (the model takes its level sizes from the feature maps' shapes): one file serves
every batch and input size from :attr:`Detr2dForExport.min_image_size` up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .deformable_detr import DeformableDETR


class Detr2dForExport(nn.Module):
    """Deformable DETR as ``images (B, 3, H, W) -> (pred_logits (B, Q, K), pred_boxes (B, Q, 4))``.

    Its ONNX graphs leave B, H and W free (``dynamic_axes``), its ``torch.export`` programs H and W
    (:meth:`dynamic_shapes`), from :attr:`min_image_size` up: every level keeps at least 2 cells per side
    (``torch.export`` specializes sizes of 1) and, for two-stage, the encoder keeps at least as many
    cells as proposals (the top-k needs them).
    """

    input_names = ("images",)
    output_names = ("pred_logits", "pred_boxes")
    dynamic_axes = {
        "images": {0: "batch", 2: "height", 3: "width"},
        "pred_logits": {0: "batch"},
        "pred_boxes": {0: "batch"},
    }

    def __init__(self, model: DeformableDETR) -> None:
        super().__init__()
        self.model = model
        strides = list(model.backbone.strides)
        while len(strides) < model.num_levels:  # extra levels: stride-2 convs
            strides.append(2 * strides[-1])
        size = strides[-1] + 1  # ceil(size / stride) == 2 on the coarsest level
        proposals = model.transformer.two_stage_num_proposals if model.two_stage else 0
        while sum(math.ceil(size / stride) ** 2 for stride in strides) < proposals:
            size += 1
        self.min_image_size = size

    def dynamic_shapes(self) -> tuple[dict[int, torch.export.Dim]]:
        """``torch.export`` ``dynamic_shapes`` of ``images``: H and W free from :attr:`min_image_size`."""
        size = self.min_image_size
        return ({2: torch.export.Dim("height", min=size), 3: torch.export.Dim("width", min=size)},)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw head outputs of the last decoder layer for an unpadded batch."""
        out = self.model(images)  # no mask: unpadded, known without reading data (traceable)
        return out["pred_logits"], out["pred_boxes"]
