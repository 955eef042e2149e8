"""3D detection decoder: object queries with 3-d reference points refined layer by layer, cls/reg branches.

The decoder is shared by the two heads: with :class:`BEVDecoderLayer` the queries read the BEV
(BEVFormer); with :class:`bev.detr3d_head.Detr3DDecoderLayer` they read the camera features directly
(DETR3D). A layer is any module called as ``layer(query, query_pos, reference_points, memory)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from datasets.nuscenes.constants import PC_RANGE
from detr2d.layers.box_ops import inverse_sigmoid
from detr2d.layers.transformer import DecoderLayer

from .box_coder import CODE_SIZE, CODE_WEIGHTS
from .projection import check_pc_range, normalized_to_metric

CLS_PRIOR_PROB = 0.01


@dataclass
class BEVMemory:
    """What the BEV decoder layers read: the BEV of the encoder as a single-level feature map."""

    bev: torch.Tensor  # (B, bev_h * bev_w, C)
    bev_h: int
    bev_w: int

    def repeat_batch(self, times: int) -> BEVMemory:
        """Each sample ``times`` times in a row (sample b becomes b * times ... b * times + times - 1)."""
        return BEVMemory(self.bev.repeat_interleave(times, dim=0), self.bev_h, self.bev_w)


class BEVDecoderLayer(DecoderLayer):
    """detr2d's deformable decoder layer over the one-level BEV: self-attn, cross-attn, FFN, each + norm.

    The cross-attention is :class:`ops.MSDeformAttn` with one level, referenced at the (x, y) of the
    query's 3-d reference point.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        num_heads: int = 8,
        num_points: int = 4,
        backend: str | None = None,
    ) -> None:
        super().__init__(embed_dims, ffn_dims, dropout, 1, num_heads, num_points, backend=backend)

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: BEVMemory,
    ) -> torch.Tensor:
        """Args:
            query, query_pos: (B, Q, C).
            reference_points: (B, Q, 3) in [0, 1] over ``pc_range``.
            memory: the BEV.

        Returns:
            (B, Q, C).
        """
        device = query.device
        spatial_shapes = torch.tensor([[memory.bev_h, memory.bev_w]], dtype=torch.int64, device=device)
        level_start_index = torch.zeros(1, dtype=torch.int64, device=device)
        return super().forward(
            query,
            query_pos,
            reference_points[:, :, None, :2],
            memory.bev,
            spatial_shapes,
            level_start_index,
            None,
        )


class HeadOutput(NamedTuple):
    """Predictions of every decoder layer."""

    cls_logits: torch.Tensor  # (L, B, Q, num_classes)
    box_code: torch.Tensor  # (L, B, Q, 10), centre in metres (see bev.box_coder)


def classification_branch(embed_dims: int, num_classes: int, num_fcs: int) -> nn.Sequential:
    """[Linear, LayerNorm, ReLU] x num_fcs + Linear(C, num_classes), last bias at prior 0.01."""
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True)]
    last = nn.Linear(embed_dims, num_classes)
    nn.init.constant_(last.bias, -math.log((1 - CLS_PRIOR_PROB) / CLS_PRIOR_PROB))
    return nn.Sequential(*layers, last)


def regression_branch(embed_dims: int, num_fcs: int) -> nn.Sequential:
    """[Linear, ReLU] x num_fcs + Linear(C, 10)."""
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(embed_dims, CODE_SIZE))


class DetectionDecoder(nn.Module):
    """Object queries decoded by a stack of layers, with iterative refinement of 3-d reference points.

    ``query_embedding`` (num_queries, 2C) splits into query_pos (first C) and the query content; the
    initial reference points are sigmoid(``reference_points``(query_pos)) in [0, 1]^3 over
    ``pc_range``. After layer l, ``cls_branches[l]`` gives logits and ``reg_branches[l]`` a raw code:
    its (0, 1) and 4 entries are added to the inverse-sigmoid of the reference (x, y) and z, and the
    sigmoid of the sums is both the predicted centre (scaled onto ``pc_range``, metres) and, detached,
    the next layer's reference points.

    With ``num_groups`` G > 1 (Group DETR, Chen et al., ICCV 2023) training decodes G independent groups
    of ``num_queries`` queries, each group reading the same memory and attending only to itself; the
    outputs are laid out as G times the batch (sample b, group g at b * G + g) and every group is
    matched to the ground truth on its own, so each object trains G queries per step. Evaluation
    decodes group 0 only: the extra groups cost nothing at test time.

    ``code_weights`` (10,) is a state_dict entry, as in the released BEVFormer / DETR3D checkpoints
    (their head keeps the L1 code weights as a frozen parameter); the loss is
    :class:`bev.DetectionLoss3D`, which has its own copy.

    Args:
        layers: decoder layers called as ``layer(query, query_pos, reference_points, memory)``.
        num_classes: classes C_cls (10 for nuScenes).
        embed_dims: channels C.
        num_queries: object queries Q (900).
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max).
        num_branch_fcs: hidden layers of the cls and reg branches (2).
        num_groups: query groups in training (1: the published one-to-one decoder).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        num_classes: int,
        embed_dims: int = 256,
        num_queries: int = 900,
        pc_range: Sequence[float] = PC_RANGE,
        num_branch_fcs: int = 2,
        num_groups: int = 1,
    ) -> None:
        super().__init__()
        if len(layers) == 0:
            raise ValueError("the decoder needs at least one layer")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.layers = nn.ModuleList(layers)
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.pc_range = check_pc_range(pc_range)
        self.register_buffer("code_weights", torch.tensor(CODE_WEIGHTS))
        self.query_embedding = nn.Embedding(num_groups * num_queries, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 3)
        self.cls_branches = nn.ModuleList(
            classification_branch(embed_dims, num_classes, num_branch_fcs) for _ in layers
        )
        self.reg_branches = nn.ModuleList(regression_branch(embed_dims, num_branch_fcs) for _ in layers)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers."""
        return len(self.layers)

    @property
    def active_groups(self) -> int:
        """Query groups decoded now: ``num_groups`` in training, 1 in evaluation."""
        return self.num_groups if self.training else 1

    def forward(self, memory: object, batch_size: int) -> HeadOutput:
        """Args:
            memory: what the layers read (:class:`BEVMemory` or :class:`bev.detr3d_head.CameraMemory`).
            batch_size: B.

        Returns:
            :class:`HeadOutput` of every layer, over B * :attr:`active_groups` samples.
        """
        groups = self.active_groups
        embedding = self.query_embedding.weight[: groups * self.num_queries].view(
            groups, self.num_queries, -1
        )
        embedding = embedding[None].expand(batch_size, -1, -1, -1).flatten(0, 1)  # (B * G, Q, 2C)
        query_pos, query = embedding.split(self.embed_dims, dim=-1)
        if groups > 1:
            memory = memory.repeat_batch(groups)
        reference = self.reference_points(query_pos).sigmoid()
        all_logits, all_codes = [], []
        for layer, cls_branch, reg_branch in zip(
            self.layers, self.cls_branches, self.reg_branches, strict=True
        ):
            query = layer(query, query_pos, reference, memory)
            raw = reg_branch(query)
            reference_logit = inverse_sigmoid(reference)
            centre = torch.cat(
                [raw[..., 0:2] + reference_logit[..., 0:2], raw[..., 4:5] + reference_logit[..., 2:3]], dim=-1
            ).sigmoid()
            metric = normalized_to_metric(centre, self.pc_range)
            all_codes.append(
                torch.cat([metric[..., 0:2], raw[..., 2:4], metric[..., 2:3], raw[..., 5:]], dim=-1)
            )
            all_logits.append(cls_branch(query))
            reference = centre.detach()
        return HeadOutput(torch.stack(all_logits), torch.stack(all_codes))
