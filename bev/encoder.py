"""BEV encoder (BEVFormer): learned BEV queries refined by temporal self- and spatial cross-attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from detr2d.layers.transformer import feed_forward

from .projection import bev_pillar_points, check_pc_range, project_to_cameras
from .spatial_cross_attention import SpatialCrossAttention
from .temporal_alignment import CAN_BUS_DIM, YAW_DELTA_DEGREES, align_prev_bev, bev_shift, rotate_bev
from .temporal_self_attention import TemporalSelfAttention, tsa_reference_points

TEMPORAL_ALIGNMENTS = ("published", "planar")


class BEVEncoderLayer(nn.Module):
    """Post-norm layer: TSA -> norm -> SCA -> norm -> FFN -> norm (each attention with residual + dropout)."""

    def __init__(
        self,
        embed_dims: int,
        num_levels: int,
        num_heads: int = 8,
        tsa_points: int = 4,
        sca_points: int = 8,
        num_z_anchors: int = 4,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.temporal_self_attention = TemporalSelfAttention(
            embed_dims, num_heads=num_heads, num_points=tsa_points, backend=backend
        )
        self.spatial_cross_attention = SpatialCrossAttention(
            embed_dims,
            num_levels=num_levels,
            num_heads=num_heads,
            num_points=sca_points,
            num_z_anchors=num_z_anchors,
            backend=backend,
        )
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(embed_dims)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        prev_bev: torch.Tensor | None,
        prev_exists: torch.Tensor | None,
        current: torch.Tensor | None,
        reference_points_2d: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        visible: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        bev_h: int,
        bev_w: int,
    ) -> torch.Tensor:
        """Args:
            query: (B, Q, C) BEV queries; query_pos: (Q, C) their positional embedding.
            prev_bev: (B, Q, C) previous BEV aligned to this frame, or None when no sample has one.
            prev_exists: (B,) bool, which samples have a previous BEV (the others attend to
                themselves); ignored when ``prev_bev`` is None.
            current: (B, Q, C) TSA's current value entry for the samples with a previous BEV (the
                published encoder's first-layer queries), or None for ``query``.
            reference_points_2d: (B, 2, Q, 2) TSA reference points (history, current).
            value, reference_points_cam, visible, spatial_shapes, level_start_index: as in
                :class:`SpatialCrossAttention`.
            bev_h, bev_w: BEV grid size.

        Returns:
            (B, Q, C).
        """
        history, now = query, query
        if prev_bev is not None:
            keep = prev_exists[:, None, None]
            history = torch.where(keep, prev_bev, query)
            now = query if current is None else torch.where(keep, current, query)
        attn = self.temporal_self_attention(query, query_pos, history, bev_h, bev_w, now, reference_points_2d)
        x = self.norm1(query + self.dropout1(attn))
        attn = self.spatial_cross_attention(
            x, value, reference_points_cam, visible, spatial_shapes, level_start_index
        )
        x = self.norm2(x + self.dropout2(attn))
        return feed_forward(x, self.linear1, self.linear2, self.dropout3, self.dropout4, self.norm3)


class BEVEncoder(nn.Module):
    """Turns multi-camera features (and the previous BEV) into the current BEV.

    Learned BEV queries ``bev_embedding`` (bev_h * bev_w, C) get a learned positional embedding
    (``col_embed`` for x in the first C/2 channels, ``row_embed`` for y in the last C/2). Camera
    features get ``cams_embeds`` and ``level_embeds``. Every BEV cell carries a pillar of Z points over
    the z range, projected into every camera of its own sample; the layers then run TSA -> SCA -> FFN.

    Temporal alignment (see :mod:`bev.temporal_alignment`): ``"published"`` rotates the previous BEV
    by the yaw change about ``rotate_center`` and shifts TSA's history reference points by the ego
    translation, both read from the frame's CAN-bus vector; ``"planar"`` (ours) warps the previous BEV
    by the planar ego motion between the lidar frames. With ``use_can_bus`` the CAN-bus vector goes
    through ``can_bus_mlp`` (18 -> C/2 -> C, ReLUs, LayerNorm ``norm``) and is added to every BEV query.

    Release quirks of BEVFormer v1 that its released weights were trained with (each a switch):
    ``shift_current_refs`` (the current entry's TSA references are shifted too), ``first_layer_current``
    (with a previous BEV, every layer's TSA reads the first layer's input queries as its current
    entry), ``rotate_center`` (100, 100) whatever the grid size, ``level_embeds_rows`` 4 whatever
    the number of levels (only the first ``num_levels`` rows are used), and the ``can_bus_mlp`` biases
    keep PyTorch's default init (only its weights are Xavier-initialized).

    Args:
        bev_h, bev_w: BEV grid size (rows along y, columns along x).
        pc_range: (x_min, y_min, z_min, x_max, y_max, z_max) covered by the grid.
        embed_dims: channels C.
        num_layers: encoder layers.
        num_cams: cameras per sample.
        num_levels: feature levels per camera.
        num_heads: attention heads.
        num_points_in_pillar: Z points per pillar.
        tsa_points: TSA points per head.
        sca_points: SCA points per head and level (split among the pillar points).
        ffn_dims: FFN hidden channels.
        dropout: dropout of attention outputs and FFN.
        backend: op backend (None = automatic).
        level_embeds_rows: rows of ``level_embeds`` (None: ``num_levels``; published: 4).
        use_can_bus: add ``can_bus_mlp(can_bus)`` to the BEV queries (published: True).
        can_bus_norm: end ``can_bus_mlp`` with a LayerNorm (published: True).
        temporal_alignment: ``"published"`` or ``"planar"``.
        use_shift: published alignment: shift the history references by the ego translation.
        rotate_prev_bev: published alignment: rotate the previous BEV by the yaw change.
        rotate_center: (x, y) pixel centre of that rotation (published: (100, 100)).
        shift_current_refs: v1 quirk, see above.
        first_layer_current: v1 quirk, see above.
    """

    def __init__(
        self,
        bev_h: int,
        bev_w: int,
        pc_range: Sequence[float],
        embed_dims: int = 256,
        num_layers: int = 6,
        num_cams: int = 6,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points_in_pillar: int = 4,
        tsa_points: int = 4,
        sca_points: int = 8,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        backend: str | None = None,
        level_embeds_rows: int | None = 4,
        use_can_bus: bool = True,
        can_bus_norm: bool = True,
        temporal_alignment: str = "published",
        use_shift: bool = True,
        rotate_prev_bev: bool = True,
        rotate_center: Sequence[float] = (100.0, 100.0),
        shift_current_refs: bool = True,
        first_layer_current: bool = True,
    ) -> None:
        super().__init__()
        if temporal_alignment not in TEMPORAL_ALIGNMENTS:
            raise ValueError(
                f"temporal_alignment must be one of {TEMPORAL_ALIGNMENTS}, got {temporal_alignment!r}"
            )
        if len(rotate_center) != 2:
            raise ValueError(f"rotate_center must be (x, y) in BEV pixels, got {tuple(rotate_center)}")
        if embed_dims % 2 != 0:
            raise ValueError(f"embed_dims must be even (half row, half column embedding), got {embed_dims}")
        self.bev_h = bev_h
        self.bev_w = bev_w
        self.pc_range = check_pc_range(pc_range)
        self.embed_dims = embed_dims
        self.num_cams = num_cams
        self.num_levels = num_levels
        self.num_points_in_pillar = num_points_in_pillar
        self.use_can_bus = use_can_bus
        self.temporal_alignment = temporal_alignment
        self.use_shift = use_shift
        self.rotate_prev_bev = rotate_prev_bev
        self.rotate_center = tuple(float(v) for v in rotate_center)
        self.shift_current_refs = shift_current_refs
        self.first_layer_current = first_layer_current
        self.bev_embedding = nn.Embedding(bev_h * bev_w, embed_dims)
        self.row_embed = nn.Embedding(bev_h, embed_dims // 2)
        self.col_embed = nn.Embedding(bev_w, embed_dims // 2)
        self.cams_embeds = nn.Parameter(torch.empty(num_cams, embed_dims))
        self.level_embeds = nn.Parameter(torch.empty(max(num_levels, level_embeds_rows or 0), embed_dims))
        self.can_bus_mlp: nn.Sequential | None = None
        if use_can_bus:
            self.can_bus_mlp = nn.Sequential(
                nn.Linear(CAN_BUS_DIM, embed_dims // 2),
                nn.ReLU(inplace=True),
                nn.Linear(embed_dims // 2, embed_dims),
                nn.ReLU(inplace=True),
            )
            if can_bus_norm:
                self.can_bus_mlp.add_module("norm", nn.LayerNorm(embed_dims))
            for module in self.can_bus_mlp:
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
        self.layers = nn.ModuleList(
            BEVEncoderLayer(
                embed_dims,
                num_levels,
                num_heads=num_heads,
                tsa_points=tsa_points,
                sca_points=sca_points,
                num_z_anchors=num_points_in_pillar,
                ffn_dims=ffn_dims,
                dropout=dropout,
                backend=backend,
            )
            for _ in range(num_layers)
        )
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)
        nn.init.normal_(self.cams_embeds)
        nn.init.normal_(self.level_embeds)

    @property
    def reads_can_bus(self) -> bool:
        """Whether the encoder reads the CAN-bus vector (the MLP, or the published alignment)."""
        return self.use_can_bus or self.temporal_alignment == "published"

    def positional_embedding(self) -> torch.Tensor:
        """(bev_h * bev_w, C): [col_embed(x), row_embed(y)] per cell, row-major over (y, x)."""
        h, w = self.bev_h, self.bev_w
        cols = self.col_embed.weight[None, :, :].expand(h, w, -1)
        rows = self.row_embed.weight[:, None, :].expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, self.embed_dims)

    def flatten_features(
        self, mlvl_feats: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-camera flattening of the levels with camera and level embeddings added.

        Args:
            mlvl_feats: ``num_levels`` tensors (B, Ncam, C, H_l, W_l).

        Returns:
            value (B, Ncam, S, C), spatial_shapes (L, 2) int64, level_start_index (L,) int64.
        """
        if len(mlvl_feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(mlvl_feats)}")
        flat, shapes = [], []
        for level, feat in enumerate(mlvl_feats):
            if feat.dim() != 5 or feat.shape[1] != self.num_cams or feat.shape[2] != self.embed_dims:
                raise ValueError(
                    f"feature level {level} must have shape (B, {self.num_cams}, {self.embed_dims}, H, W), "
                    f"got {tuple(feat.shape)}"
                )
            shapes.append(feat.shape[-2:])
            flat.append(
                feat.flatten(3).transpose(2, 3)
                + self.cams_embeds[None, :, None, :]
                + self.level_embeds[None, None, level : level + 1, :]
            )
        device = mlvl_feats[0].device
        spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device)
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(dim=1).cumsum(dim=0)[:-1]]
        )
        return torch.cat(flat, dim=2), spatial_shapes, level_start_index

    def forward(
        self,
        mlvl_feats: Sequence[torch.Tensor],
        lidar2img: torch.Tensor,
        img_shape: tuple[int, int],
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            mlvl_feats: ``num_levels`` tensors (B, Ncam, C, H_l, W_l) from the neck.
            lidar2img: (B, Ncam, 4, 4) in pixels of the padded input image.
            img_shape: (H, W) of the padded input image.
            prev_bev: (B, bev_h * bev_w, C) BEV of the previous frame (in its own lidar frame), or None.
            ego_motion: (B, 4, 4) previous lidar frame -> current lidar frame; required with ``prev_bev``
                by the planar alignment (ignored by the published one).
            prev_exists: (B,) bool, which samples' ``prev_bev`` is real (default: all of them).
            can_bus: (B, 18) the frame's published CAN-bus vector
                (:func:`bev.temporal_alignment.published_can_bus`); required with ``use_can_bus``, and by
                the published alignment with ``prev_bev``.

        Returns:
            (B, bev_h * bev_w, C) the current BEV.
        """
        value, spatial_shapes, level_start_index = self.flatten_features(mlvl_feats)
        batch = value.shape[0]
        published = self.temporal_alignment == "published"
        if can_bus is None and (self.use_can_bus or (published and prev_bev is not None)):
            raise ValueError(
                "can_bus (B, 18) is required by this encoder (use_can_bus, or the published temporal "
                "alignment with a previous BEV)"
            )
        if can_bus is not None and can_bus.shape != (batch, CAN_BUS_DIM):
            raise ValueError(f"can_bus must have shape ({batch}, {CAN_BUS_DIM}), got {tuple(can_bus.shape)}")
        if prev_bev is not None:
            if prev_exists is None:
                prev_exists = torch.ones(batch, dtype=torch.bool, device=value.device)
            elif prev_exists.shape != (batch,):
                raise ValueError(f"prev_exists must have shape ({batch},), got {tuple(prev_exists.shape)}")
            prev_exists = prev_exists.to(device=value.device, dtype=torch.bool)
            if not published:
                if ego_motion is None:
                    raise ValueError(
                        "ego_motion (B, 4, 4) is required when prev_bev is given (planar alignment)"
                    )
                prev_bev = align_prev_bev(prev_bev, ego_motion, self.bev_h, self.bev_w, self.pc_range)
            elif self.rotate_prev_bev:
                angle = can_bus[:, YAW_DELTA_DEGREES]
                prev_bev = rotate_bev(prev_bev, angle, self.bev_h, self.bev_w, self.rotate_center)
        position_dtype = torch.promote_types(value.dtype, torch.float32)  # float32 under autocast
        shift = value.new_zeros(batch, 2, dtype=position_dtype)
        if published and self.use_shift and can_bus is not None:
            shift = bev_shift(can_bus, self.bev_h, self.bev_w, self.pc_range).to(position_dtype)
        reference_points_2d = tsa_reference_points(self.bev_h, self.bev_w, shift, self.shift_current_refs)
        pillars = bev_pillar_points(
            self.bev_h,
            self.bev_w,
            self.pc_range,
            self.num_points_in_pillar,
            device=value.device,
            dtype=value.dtype,
        )
        reference_points_cam, visible = project_to_cameras(
            pillars[None].expand(batch, -1, -1, -1), lidar2img, img_shape
        )
        query = self.bev_embedding.weight[None].expand(batch, -1, -1)
        if self.can_bus_mlp is not None:
            query = query + self.can_bus_mlp(can_bus.to(query.dtype))[:, None, :]
        query_pos = self.positional_embedding()
        current = query if self.first_layer_current and prev_bev is not None else None
        for layer in self.layers:
            query = layer(
                query,
                query_pos,
                prev_bev,
                prev_exists,
                current,
                reference_points_2d,
                value,
                reference_points_cam,
                visible,
                spatial_shapes,
                level_start_index,
                self.bev_h,
                self.bev_w,
            )
        return query
