"""PETR / PETRv2 (Liu et al., ECCV 2022 / ICCV 2023): 3D position embeddings on multi-view image features.

No BEV and no sampling: every camera feature cell gets a 3D position embedding built from the camera
frustum (64 depths along its ray, mapped into the lidar frame by the inverse ``lidar2img``), and
anchor-based object queries attend to all N * H * W cells of all views with plain multi-head attention.

Pieces (names and shapes as in the released checkpoints, :mod:`bev.petr_official` maps them):

- :func:`depth_bins`, :func:`frustum_coordinates`: the normalized 3D coordinates of every feature cell.
- :func:`multiview_sine_embedding`, :func:`anchor_sine_embedding`: the sine embeddings of (view, row,
  column) and of the (y, x, z) anchors.
- :class:`CPFPN`: the neck of the P4 configs (one output conv, on the finest level).
- :class:`PETRDecoder`: post-norm global-attention decoder (DETR's decoder layer).
- :class:`GroupedRegressionBranch`, :class:`FeatureGuidedEncoder`: PETRv2's grouped box branch and
  feature-guided position encoder.
- :func:`anchor_box_code`, :func:`frame_interval`: box code from the anchors, velocity per second.
- :class:`PETRHead`, :class:`PETR`: the head and the detector (backbone, neck, head, top-k decoder).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasets.nuscenes.constants import PC_RANGE
from detr2d.layers.box_ops import inverse_sigmoid
from detr2d.layers.fpn import conv_module
from detr2d.layers.transformer import DETRDecoderLayer
from detr2d.position_encoding import sine_embed

from .box_coder import CODE_SIZE, CODE_WEIGHTS, NMSFreeDecoder
from .decoder import HeadOutput, classification_branch, regression_branch
from .export import camera_ring
from .projection import check_pc_range, normalized_to_metric

#: The range the 3D coordinates are normalized over (x, y, z min, then max), and the depth limit.
POSITION_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
#: PETRv2's regression groups: centre (x, y), z, log size, (sin, cos) yaw, velocity.
GROUP_DIMS = (2, 1, 3, 2, 2)
COORD_EPS = 1e-5
SINE_EPS = 1e-6


def depth_bins(
    num_depths: int = 64, depth_start: float = 1.0, depth_max: float = 61.2, lid: bool = True
) -> torch.Tensor:
    """The depths sampled along every camera ray, (num_depths,) float32 metres.

    LID (linear-increasing, every PETR config): ``d_i = start + i (i + 1) (max - start) / (D (D + 1))``;
    uniform: ``d_i = start + i (max - start) / D``, for i = 0 .. D-1.
    """
    if num_depths < 1:
        raise ValueError(f"num_depths must be >= 1, got {num_depths}")
    index = torch.arange(num_depths, dtype=torch.float32)
    if lid:
        return depth_start + (depth_max - depth_start) / (num_depths * (num_depths + 1)) * index * (index + 1)
    return depth_start + (depth_max - depth_start) / num_depths * index


def frustum_coordinates(
    lidar2img: torch.Tensor,
    feat_size: tuple[int, int],
    pad_size: tuple[int, int],
    depths: torch.Tensor,
    position_range: Sequence[float] = POSITION_RANGE,
) -> torch.Tensor:
    """Lidar-frame points of every feature cell at every depth, normalized to [0, 1] over ``position_range``.

    Cell (r, c) of an (H, W) map of a (pad_h, pad_w) image sits at pixel (u, v) = (c pad_w / W,
    r pad_h / H) (its top-left corner); at depth d it is the homogeneous point (u d, v d, d, 1) mapped
    by ``lidar2img^-1`` (inverted in float64, applied in float32, as the original).

    Args:
        lidar2img: (B, N, 4, 4) lidar -> image pixels of each view.
        feat_size: (H, W); pad_size: (pad_h, pad_w) of the image the pixels refer to.
        depths: (D,) metres (:func:`depth_bins`).
        position_range: (x_min, y_min, z_min, x_max, y_max, z_max) of the normalization.

    Returns:
        (B, N, D, 3, H, W) float32; values outside [0, 1] are points outside the range.
    """
    if lidar2img.dim() != 4 or lidar2img.shape[-2:] != (4, 4):
        raise ValueError(f"lidar2img must have shape (B, N, 4, 4), got {tuple(lidar2img.shape)}")
    low_high = check_pc_range(position_range)
    height, width = feat_size
    device = lidar2img.device
    u = torch.arange(width, device=device, dtype=torch.float32) * pad_size[1] / width
    v = torch.arange(height, device=device, dtype=torch.float32) * pad_size[0] / height
    d = depths.to(device=device, dtype=torch.float32)
    scale = d.clamp(min=COORD_EPS)
    columns = u[:, None, None] * scale  # (W, 1, D)
    rows = v[None, :, None] * scale  # (1, H, D)
    grid = torch.stack(torch.broadcast_tensors(columns, rows, d, torch.ones_like(d)), dim=-1)  # (W, H, D, 4)
    img2lidar = torch.linalg.inv(lidar2img.double()).float()
    points = torch.einsum("bnij,whdj->bnwhdi", img2lidar, grid)[..., :3]
    low = points.new_tensor(low_high[:3])
    size = points.new_tensor(low_high[3:]) - low
    normalized = (points - low) / size
    return normalized.permute(0, 1, 4, 5, 3, 2).contiguous()  # (B, N, D, 3, H, W)


def multiview_sine_embedding(
    mask: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """PETR's 3-axis sine embedding of (view, row, column) from the padding mask.

    Each axis coordinate is the running count of valid cells along that axis (views, rows, columns),
    divided by its last value (+1e-6) and multiplied by 2 pi (no half-cell shift).

    Args:
        mask: (B, N, H, W) bool, True on padding.

    Returns:
        (B, N, 3 num_feats, H, W) float32: view, row, column features, sine/cosine interleaved.
    """
    if mask.dim() != 4:
        raise ValueError(f"mask must have shape (B, N, H, W), got {tuple(mask.shape)}")
    valid = (~mask).float()
    axes = []
    for dim in (1, 2, 3):
        count = valid.cumsum(dim)
        axes.append(count / (count.narrow(dim, count.shape[dim] - 1, 1) + SINE_EPS) * (2 * math.pi))
    return sine_embed(torch.stack(axes, dim=-1), num_feats, temperature).permute(0, 1, 4, 2, 3).contiguous()


def anchor_sine_embedding(
    anchors: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0
) -> torch.Tensor:
    """Sine embedding of normalized 3D anchors, axis order y, x, z (the original's ``pos2posemb3d``).

    Args:
        anchors: (..., 3) (x, y, z) in [0, 1].

    Returns:
        (..., 3 num_feats): the coordinates times 2 pi, sine/cosine interleaved, y features first.
    """
    if anchors.shape[-1] != 3:
        raise ValueError(f"anchors must end in 3 values (x, y, z), got {tuple(anchors.shape)}")
    return sine_embed(anchors[..., [1, 0, 2]] * (2 * math.pi), num_feats, temperature)


def anchor_box_code(
    raw: torch.Tensor,
    anchors: torch.Tensor,
    pc_range: Sequence[float] = PC_RANGE,
    time_interval: torch.Tensor | None = None,
) -> torch.Tensor:
    """The 10-d box code (:mod:`bev.box_coder`) from the regression output and the fixed anchors.

    x, y, z = sigmoid(raw + inverse_sigmoid(anchor)) mapped onto ``pc_range`` (metres); the other
    entries are raw, the velocity divided by ``time_interval`` when given (PETRv2).

    Args:
        raw: (..., B, Q, 10) regression output; anchors: (Q, 3) normalized (x, y, z).
        time_interval: (B,) seconds between the two frames, or None.

    Returns:
        (..., B, Q, 10).
    """
    if raw.shape[-1] != CODE_SIZE or raw.shape[-2] != anchors.shape[0]:
        raise ValueError(
            f"raw must have shape (..., B, {anchors.shape[0]}, {CODE_SIZE}), got {tuple(raw.shape)}"
        )
    reference = inverse_sigmoid(anchors)
    centre = torch.cat([raw[..., 0:2] + reference[:, 0:2], raw[..., 4:5] + reference[:, 2:3]], dim=-1)
    metric = normalized_to_metric(centre.sigmoid(), pc_range)
    velocity = raw[..., 8:10]
    if time_interval is not None:
        velocity = velocity / time_interval[:, None, None]
    return torch.cat([metric[..., 0:2], raw[..., 2:4], metric[..., 2:3], raw[..., 5:8], velocity], dim=-1)


def frame_interval(timestamps: torch.Tensor, cams_per_frame: int = 6) -> torch.Tensor:
    """PETRv2's frame interval: mean over the cameras of (earlier view's - current view's timestamp).

    Args:
        timestamps: (B, 2 cams_per_frame) seconds, the current frame's views first.

    Returns:
        (B,) seconds.
    """
    if timestamps.dim() != 2 or timestamps.shape[1] != 2 * cams_per_frame:
        raise ValueError(
            f"timestamps must have shape (B, {2 * cams_per_frame}) (current views, then the earlier "
            f"frame's), got {tuple(timestamps.shape)}"
        )
    frames = timestamps.view(timestamps.shape[0], 2, cams_per_frame)
    return (frames[:, 1] - frames[:, 0]).mean(-1)


class CPFPN(nn.Module):
    """PETR's ``CPFPN`` neck: top-down FPN whose output conv exists only on the finest level.

    Every level gets a biased 1x1 lateral conv (``lateral_convs.i.conv``); coarser laterals are
    upsampled (nearest) and added top-down; the finest sum goes through a 3x3 conv (``fpn_convs.0.conv``),
    the other levels are returned as their (summed) laterals. Convs are Xavier-uniform, zero bias.

    Args:
        in_channels: channels of each input level, finest first ((768, 1024) for VoVNet-99 stage4-5).
        out_channels: channels of every output level.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("CPFPN needs at least one input level")
        self.lateral_convs = nn.ModuleList(conv_module(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList([conv_module(out_channels, out_channels, 3)])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """(B, C_l, H_l, W_l) per level -> (B, out_channels, H_l, W_l) per level."""
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"CPFPN expects {len(self.lateral_convs)} levels, got {len(features)}")
        laterals = [conv(feature) for conv, feature in zip(self.lateral_convs, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        return [self.fpn_convs[0](laterals[0]), *laterals[1:]]


class PETRDecoder(nn.Module):
    """A stack of DETR's decoder layers (:class:`detr2d.layers.transformer.DETRDecoderLayer`); ``post_norm``
    on every layer's output, all layers returned.

    Args:
        num_layers: L; the other arguments as :class:`detr2d.layers.transformer.DETRDecoderLayer`.
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dims: int = 256,
        num_heads: int = 8,
        ffn_dims: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.layers = nn.ModuleList(
            DETRDecoderLayer(embed_dims, num_heads, ffn_dims, dropout) for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dims)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Queries (B, Q, C) with positions, memory (B, S, C) with positions, memory padding (B, S) or
        None, as :meth:`detr2d.layers.transformer.DETRDecoderLayer.forward`. Returns (L, B, Q, C),
        non-finite values as 0 (the next layer reads the un-normed output)."""
        outputs = []
        for layer in self.layers:
            query = layer(query, query_pos, memory, memory_pos, padding_mask)
            outputs.append(self.post_norm(query))
        return torch.nan_to_num(torch.stack(outputs))


class GroupedRegressionBranch(nn.Module):
    """PETRv2's box branch: shared [Linear, ReLU, Dropout(0)] x num_fcs, then one Linear-ReLU-Linear
    head per group of code entries (``GROUP_DIMS``), concatenated in order into the 10-d code."""

    def __init__(
        self, embed_dims: int = 256, num_fcs: int = 2, group_dims: Sequence[int] = GROUP_DIMS
    ) -> None:
        super().__init__()
        if sum(group_dims) != CODE_SIZE:
            raise ValueError(f"group_dims must add up to {CODE_SIZE}, got {tuple(group_dims)}")
        shared: list[nn.Module] = []
        for _ in range(num_fcs):
            shared += [nn.Linear(embed_dims, embed_dims), nn.ReLU(), nn.Dropout(0.0)]
        self.reg_branch = nn.Sequential(*shared)
        self.task_heads = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(), nn.Linear(embed_dims, dims))
            for dims in group_dims
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., 10)."""
        shared = self.reg_branch(x)
        return torch.cat([head(shared) for head in self.task_heads], dim=-1)


class FeatureGuidedEncoder(nn.Module):
    """PETRv2's feature-guided position encoder: ``pos * sigmoid(conv_expand(relu(conv_reduce(feat))))``
    with biased 1x1 convs C -> C."""

    def __init__(self, embed_dims: int = 256) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(embed_dims, embed_dims, 1)
        self.conv_expand = nn.Conv2d(embed_dims, embed_dims, 1)

    def forward(self, pos: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """pos, feat: (M, C, H, W) -> (M, C, H, W)."""
        return pos * self.conv_expand(F.relu(self.conv_reduce(feat))).sigmoid()


class PETRHead(nn.Module):
    """PETR / PETRv2 head: 3D position embedding, anchor queries, global-attention decoder, branches.

    Key position embedding = position_encoder(inverse_sigmoid(frustum coordinates)) (times the
    feature gate with ``feature_guided``) + adapt_pos3d(multi-view sine embedding). Query position =
    query_embedding(anchor sine embedding); content queries start at zero. Every decoder layer's output
    goes through its cls / reg branch; the box code uses the same anchors in every layer
    (:func:`anchor_box_code`, no iterative refinement).

    Args:
        in_channels: channels of the feature map read (256 after the neck, 2048 for C5).
        num_classes, embed_dims, num_queries, num_layers, num_heads, ffn_dims, dropout: model sizes.
        num_depths, depth_start, lid: the frustum depths (:func:`depth_bins`, up to position_range x max).
        position_range: normalization range of the frustum coordinates.
        pc_range: range of the predicted box centres.
        code_weights: the stored L1 code weights (PETR: velocity 0.2; PETRv2: all 1).
        shared_branches: one cls and one reg branch for every layer (PETR v1; the checkpoint lists the
            same tensors once per layer), else independent copies (PETRv2).
        grouped_regression: :class:`GroupedRegressionBranch` (PETRv2) instead of the plain MLP.
        feature_guided: :class:`FeatureGuidedEncoder` on the 3D embedding (PETRv2).
        with_time: velocity divided by the frame interval (PETRv2; needs ``timestamps``).
        num_branch_fcs: hidden layers of the branches (2).
    """

    def __init__(
        self,
        in_channels: int = 256,
        num_classes: int = 10,
        embed_dims: int = 256,
        num_queries: int = 900,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dims: int = 2048,
        dropout: float = 0.1,
        num_depths: int = 64,
        depth_start: float = 1.0,
        lid: bool = True,
        position_range: Sequence[float] = POSITION_RANGE,
        pc_range: Sequence[float] = PC_RANGE,
        code_weights: Sequence[float] = CODE_WEIGHTS,
        shared_branches: bool = True,
        grouped_regression: bool = False,
        feature_guided: bool = False,
        with_time: bool = False,
        num_branch_fcs: int = 2,
    ) -> None:
        super().__init__()
        if embed_dims % 2:
            raise ValueError(
                f"embed_dims must be even (the sine embeddings use embed_dims / 2), got {embed_dims}"
            )
        if len(code_weights) != CODE_SIZE:
            raise ValueError(f"code_weights must have {CODE_SIZE} entries, got {len(code_weights)}")
        self.num_classes = num_classes
        self.embed_dims = embed_dims
        self.num_queries = num_queries
        self.position_range = check_pc_range(position_range)
        self.pc_range = check_pc_range(pc_range)
        self.with_time = with_time
        self.register_buffer("code_weights", torch.tensor(code_weights, dtype=torch.float32))
        self.register_buffer(
            "depths", depth_bins(num_depths, depth_start, self.position_range[3], lid), persistent=False
        )
        self.input_proj = nn.Conv2d(in_channels, embed_dims, kernel_size=1)

        def cls_branch() -> nn.Module:
            return classification_branch(embed_dims, num_classes, num_branch_fcs)

        def reg_branch() -> nn.Module:
            if grouped_regression:
                return GroupedRegressionBranch(embed_dims, num_branch_fcs)
            return regression_branch(embed_dims, num_branch_fcs)

        if shared_branches:
            cls, reg = cls_branch(), reg_branch()
            self.cls_branches = nn.ModuleList([cls] * num_layers)
            self.reg_branches = nn.ModuleList([reg] * num_layers)
        else:
            self.cls_branches = nn.ModuleList(cls_branch() for _ in range(num_layers))
            self.reg_branches = nn.ModuleList(reg_branch() for _ in range(num_layers))
        half = embed_dims // 2
        self.adapt_pos3d = nn.Sequential(
            nn.Conv2d(3 * half, 4 * embed_dims, 1), nn.ReLU(), nn.Conv2d(4 * embed_dims, embed_dims, 1)
        )
        self.position_encoder = nn.Sequential(
            nn.Conv2d(3 * num_depths, 4 * embed_dims, 1), nn.ReLU(), nn.Conv2d(4 * embed_dims, embed_dims, 1)
        )
        self.reference_points = nn.Embedding(num_queries, 3)
        self.query_embedding = nn.Sequential(
            nn.Linear(3 * half, embed_dims), nn.ReLU(), nn.Linear(embed_dims, embed_dims)
        )
        self.fpe = FeatureGuidedEncoder(embed_dims) if feature_guided else None
        self.decoder = PETRDecoder(num_layers, embed_dims, num_heads, ffn_dims, dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published init: Xavier-uniform (zero bias) on every decoder module with a matrix weight,
        anchors uniform in [0, 1], the last classification bias at prior 0.01 (the rest: PyTorch's)."""
        for module in self.decoder.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() > 1:
                nn.init.xavier_uniform_(weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.uniform_(self.reference_points.weight, 0.0, 1.0)
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, -math.log((1 - 0.01) / 0.01))

    def position_embedding(
        self, feat: torch.Tensor, mask: torch.Tensor, lidar2img: torch.Tensor, pad_size: tuple[int, int]
    ) -> torch.Tensor:
        """Key position embedding (B, N, C, H, W) of the projected features ``feat`` (B, N, C, H, W),
        given the padding ``mask`` (B, N, H, W) and the views' ``lidar2img`` (B, N, 4, 4)."""
        batch, num_views, channels, height, width = feat.shape
        coords = frustum_coordinates(lidar2img, (height, width), pad_size, self.depths, self.position_range)
        coords = inverse_sigmoid(coords.flatten(2, 3).flatten(0, 1)).to(feat.dtype)  # (B * N, 3D, H, W)
        pos3d = self.position_encoder(coords)
        if self.fpe is not None:
            pos3d = self.fpe(pos3d, feat.flatten(0, 1))
        sine = multiview_sine_embedding(mask, self.embed_dims // 2).to(feat.dtype)
        return (pos3d + self.adapt_pos3d(sine.flatten(0, 1))).view(batch, num_views, channels, height, width)

    def forward(
        self,
        feat: torch.Tensor,
        lidar2img: torch.Tensor,
        pad_size: tuple[int, int],
        img_size: tuple[int, int],
        timestamps: torch.Tensor | None = None,
    ) -> HeadOutput:
        """Args:
            feat: (B, N, in_channels, H, W) one feature level of all N views.
            lidar2img: (B, N, 4, 4) lidar -> pixels of the (unpadded) input images.
            pad_size: (pad_h, pad_w) of the padded images; img_size: (h, w) of the valid part.
            timestamps: (B, N) seconds per view (lidar time - camera time; current views first), needed
                with ``with_time``.

        Returns:
            :class:`HeadOutput`: ``cls_logits`` (L, B, Q, num_classes), ``box_code`` (L, B, Q, 10) with
            metric centres.
        """
        if feat.dim() != 5 or lidar2img.shape != (*feat.shape[:2], 4, 4):
            raise ValueError(
                f"feat must be (B, N, C, H, W) and lidar2img (B, N, 4, 4); got {tuple(feat.shape)} and "
                f"{tuple(lidar2img.shape)}"
            )
        if self.with_time and timestamps is None:
            raise ValueError(
                "this PETR head divides velocities by the frame interval: timestamps (B, N) needed"
            )
        batch, num_views = feat.shape[:2]
        x = self.input_proj(feat.flatten(0, 1))
        x = x.view(batch, num_views, *x.shape[1:])
        full = x.new_ones(batch, num_views, *pad_size)
        full[..., : img_size[0], : img_size[1]] = 0
        mask = F.interpolate(full, size=x.shape[-2:]).bool()
        pos = self.position_embedding(x, mask, lidar2img, pad_size)
        memory = x.permute(0, 1, 3, 4, 2).flatten(1, 3)  # (B, N * H * W, C), view-major
        memory_pos = pos.permute(0, 1, 3, 4, 2).flatten(1, 3)
        anchors = self.reference_points.weight
        query_pos = self.query_embedding(anchor_sine_embedding(anchors, self.embed_dims // 2).to(x.dtype))
        query_pos = query_pos[None].expand(batch, -1, -1)
        hidden = self.decoder(torch.zeros_like(query_pos), query_pos, memory, memory_pos, mask.flatten(1))
        cls_logits = torch.stack([branch(h) for branch, h in zip(self.cls_branches, hidden, strict=True)])
        raw = torch.stack([branch(h) for branch, h in zip(self.reg_branches, hidden, strict=True)])
        interval = frame_interval(timestamps, num_views // 2) if self.with_time else None
        return HeadOutput(cls_logits, anchor_box_code(raw, anchors, self.pc_range, interval))


class PETR(nn.Module):
    """PETR / PETRv2 detector: image backbone, optional neck, :class:`PETRHead`, top-k box decoding.

    Batch contract: ``img`` (B, N, 3, H, W) normalized images (the published configs: BGR, see
    :mod:`bev.petr_builder`), zero-padded here at the bottom/right to a multiple of ``size_divisor``;
    ``lidar2img`` (B, N, 4, 4) for the unpadded images; PETRv2 (``head.with_time``): N = 12 views (the
    current frame's cameras, then the same cameras of an earlier frame whose ``lidar2img`` maps
    points of the CURRENT lidar frame) and ``timestamps`` (B, N) seconds per view. ``model(batch)``
    returns the :class:`HeadOutput` of every decoder layer; ``model.decode(outputs)`` the boxes.

    Args:
        head: the head; backbone: ``backbone(x (M, 3, H, W)) -> list of maps``; neck: module mapping
            that list to ``embed_dims``-wide maps, or None (C5: the head reads the backbone map);
        box_decoder: top-k decoding of the last layer.
        num_views: N.
        feature_level: index of the (neck) level the head reads (0: the stride-16 P4 / the only map).
        size_divisor: padding multiple.
    """

    def __init__(
        self,
        head: PETRHead,
        backbone: nn.Module,
        neck: nn.Module | None,
        box_decoder: NMSFreeDecoder,
        num_views: int = 6,
        feature_level: int = 0,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.head = head
        self.backbone = backbone
        self.neck = neck
        self.box_decoder = box_decoder
        self.num_views = num_views
        self.feature_level = feature_level
        self.size_divisor = size_divisor

    def predict(
        self, img: torch.Tensor, lidar2img: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> HeadOutput:
        """Head outputs of every decoder layer. img: (B, N, 3, H, W); lidar2img: (B, N, 4, 4);
        timestamps: (B, N) or None."""
        if img.dim() != 5 or img.shape[1] != self.num_views or img.shape[2] != 3:
            raise ValueError(f"img must have shape (B, {self.num_views}, 3, H, W), got {tuple(img.shape)}")
        if lidar2img.shape != (img.shape[0], self.num_views, 4, 4):
            raise ValueError(
                f"lidar2img must have shape {(img.shape[0], self.num_views, 4, 4)}, "
                f"got {tuple(lidar2img.shape)}"
            )
        batch, num_views, _, height, width = img.shape
        pad_h, pad_w = (-height) % self.size_divisor, (-width) % self.size_divisor
        images = F.pad(img.flatten(0, 1), (0, pad_w, 0, pad_h))
        levels = self.backbone(images)
        if self.neck is not None:
            levels = self.neck(levels)
        feat = levels[self.feature_level]
        feat = feat.view(batch, num_views, *feat.shape[1:])
        return self.head(feat, lidar2img, (height + pad_h, width + pad_w), (height, width), timestamps)

    def for_export(
        self, image_size: tuple[int, int], batch: int = 1
    ) -> tuple[PETRForExport, tuple[torch.Tensor, ...]]:
        """The export graph of this detector (:class:`PETRForExport`) and example inputs: random images,
        a ring of cameras (:func:`bev.export.camera_ring`; PETRv2's earlier frame the same ring) and, for
        PETRv2, timestamps with the earlier frame 0.5 s back; ``image_size`` (H, W) of every view."""
        height, width = image_size
        device = next(self.parameters()).device
        img = torch.randn(batch, self.num_views, 3, height, width, device=device)
        cams = self.num_views // 2 if self.head.with_time else self.num_views
        lidar2img = camera_ring(cams, image_size, batch).repeat(1, self.num_views // cams, 1, 1).to(device)
        if not self.head.with_time:
            return PETRForExport(self), (img, lidar2img)
        timestamps = torch.zeros(batch, self.num_views, device=device)
        timestamps[:, cams:] = 0.5
        return PETRForExport(self), (img, lidar2img, timestamps)

    def forward(self, batch: Mapping[str, Any]) -> HeadOutput:
        """``batch``: ``img``, ``lidar2img`` and, for PETRv2, ``timestamps`` (see the class docstring)."""
        missing = [
            k
            for k in ("img", "lidar2img", *(("timestamps",) if self.head.with_time else ()))
            if k not in batch
        ]
        if missing:
            raise ValueError(f"the PETR batch is missing {missing}; it has {sorted(batch)}")
        return self.predict(batch["img"], batch["lidar2img"], batch.get("timestamps"))

    def decode(self, outputs: HeadOutput) -> list[dict[str, torch.Tensor]]:
        """B dicts of ``boxes`` (K, 9) (centre z), ``scores`` (K,), ``labels`` (K,) from the last layer."""
        return self.box_decoder.decode(outputs.cls_logits[-1], outputs.box_code[-1])


class PETRForExport(nn.Module):
    """A :class:`PETR`'s graph for export (:mod:`detr2d.runtime.export` writes it): ``img`` (B, N, 3, H, W),
    ``lidar2img`` (B, N, 4, 4) and, for PETRv2, ``timestamps`` (B, N) -> ``cls_logits`` (B, Q, num_classes)
    and ``box_code`` (B, Q, 10) of the last decoder layer (what ``model.box_decoder.decode`` takes).
    Global attention, the 3D position embedding and the lidar2img inverse are standard operators; the
    graph is exported for the example images' size."""

    def __init__(self, model: PETR) -> None:
        super().__init__()
        self.model = model
        self.input_names = ("img", "lidar2img", *(("timestamps",) if model.head.with_time else ()))
        self.output_names = ("cls_logits", "box_code")

    def forward(
        self, img: torch.Tensor, lidar2img: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer ``cls_logits`` (B, Q, K) and ``box_code`` (B, Q, 10)."""
        outputs = self.model.predict(img, lidar2img, timestamps)
        return outputs.cls_logits[-1], outputs.box_code[-1]
