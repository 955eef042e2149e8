"""The deformable transformer: flattened levels, encoder, queries (learned or two-stage), decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ops import MSDeformAttn

from .decoder import Decoder
from .encoder import Encoder, EncoderLayer, level_sizes
from .layers.padding import PADDING_MODES, valid_ratios
from .layers.transformer import DecoderLayer
from .position_encoding import proposal_sine_embed


class TransformerOutput(NamedTuple):
    """What the transformer hands to the detection heads.

    Attributes:
        hs: (D, N, Q, C) decoder output of every layer.
        init_reference: (N, Q, 2) points, or (N, Q, 4) boxes for two-stage, before the first layer.
        inter_references: (D, N, Q, 2 or 4) references after every layer.
        enc_outputs_class: (N, S, K) proposal logits of every encoder position (two-stage), else None.
        enc_outputs_coord_unact: (N, S, 4) proposal boxes in logit space (two-stage), else None;
            ``inf`` at padded and invalid positions.
    """

    hs: Tensor
    init_reference: Tensor
    inter_references: Tensor
    enc_outputs_class: Tensor | None
    enc_outputs_coord_unact: Tensor | None


class FlatLevels(NamedTuple):
    """Multi-level maps flattened along space: S = sum_l H_l * W_l."""

    src: Tensor  # (N, S, C)
    mask: Tensor  # (N, S) bool
    pos: Tensor  # (N, S, C) position + level embedding
    spatial_shapes: Tensor  # (L, 2) int64
    level_start_index: Tensor  # (L,) int64
    valid_ratios: Tensor  # (N, L, 2)
    sizes: Sequence[tuple[int, int]] | None = None  # (H_l, W_l) as ints / SymInts; None: spatial_shapes

    def level_sizes(self) -> list[tuple[int, int]]:
        """(H_l, W_l) of every level: ``sizes`` (traceable), else read from ``spatial_shapes`` (eager)."""
        return level_sizes(self.spatial_shapes if self.sizes is None else self.sizes)


class DeformableTransformer(nn.Module):
    """Deformable DETR's encoder-decoder.

    Args:
        embed_dims: width C.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth D.
        ffn_dims: FFN hidden width.
        dropout: dropout probability.
        num_levels: levels L.
        decoder_points: sampling points of the decoder cross-attention.
        encoder_points: sampling points of the encoder self-attention.
        two_stage: build queries from the top encoder proposals (needs the heads attached to the
            decoder, see :meth:`Decoder.attach_heads`) instead of learned query embeddings.
        two_stage_num_proposals: how many proposals become queries.
        backend: backend of the deformable attention op (None = automatic).
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_dims: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        decoder_points: int = 4,
        encoder_points: int = 4,
        two_stage: bool = False,
        two_stage_num_proposals: int = 300,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc_layer = EncoderLayer(
            embed_dims, ffn_dims, dropout, num_levels, num_heads, encoder_points, backend
        )
        self.encoder = Encoder(enc_layer, num_encoder_layers)
        dec_layer = DecoderLayer(
            embed_dims, ffn_dims, dropout, num_levels, num_heads, decoder_points, backend
        )
        self.decoder = Decoder(dec_layer, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dims))
        if two_stage:
            self.enc_output = nn.Linear(embed_dims, embed_dims)
            self.enc_output_norm = nn.LayerNorm(embed_dims)
            self.pos_trans = nn.Linear(2 * embed_dims, 2 * embed_dims)
            self.pos_trans_norm = nn.LayerNorm(2 * embed_dims)
        else:
            self.reference_points = nn.Linear(embed_dims, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: xavier-uniform matrices, then the deformable attention's own init."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def flatten_levels(self, srcs: list[Tensor], masks: list[Tensor], pos_embeds: list[Tensor]) -> FlatLevels:
        """Flatten (N, C, H_l, W_l) maps, (N, H_l, W_l) masks and positions; add the level embedding."""
        sizes = [(s.shape[-2], s.shape[-1]) for s in srcs]  # ints, SymInts while torch.export traces
        # one scalar tensor per size: torch.export keeps them symbolic (as_tensor would bake the values in)
        spatial_shapes = torch.stack(
            [torch.scalar_tensor(v, dtype=torch.long, device=srcs[0].device) for hw in sizes for v in hw]
        ).view(-1, 2)
        level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
        pos = [p.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, p in enumerate(pos_embeds)]
        return FlatLevels(
            src=torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1),
            mask=torch.cat([m.flatten(1) for m in masks], 1),
            pos=torch.cat(pos, 1),
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=torch.stack([valid_ratios(m) for m in masks], 1),
            sizes=sizes,
        )

    def encoder_proposals(self, memory: Tensor, flat: FlatLevels) -> tuple[Tensor, Tensor, Tensor]:
        """One proposal per encoder cell: its centre with size 0.05 * 2^level, in logit space.

        Args:
            memory: (N, S, C) encoder output.
            flat: the flattened levels.

        Returns:
            output_memory (N, S, C): ``enc_output_norm(enc_output(memory))`` with padded/invalid rows
            zeroed first; proposals (N, S, 4) in logit space (``inf`` where padded or invalid);
            valid (N, S) bool: not padded and all coordinates within (0.01, 0.99).
        """
        n = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(flat.level_sizes()):
            mask = flat.mask[:, start : start + h * w].view(n, h, w)
            start = start + h * w
            valid_h = (~mask[:, :, 0]).sum(1).float()
            valid_w = (~mask[:, 0, :]).sum(1).float()
            ys = torch.arange(h, dtype=torch.float32, device=memory.device) + 0.5
            xs = torch.arange(w, dtype=torch.float32, device=memory.device) + 0.5
            cy = (ys[None, :, None] / valid_h[:, None, None]).expand(n, h, w)
            cx = (xs[None, None, :] / valid_w[:, None, None]).expand(n, h, w)
            wh = torch.full_like(cx, 0.05 * 2.0**lvl)
            proposals.append(torch.stack([cx, cy, wh, wh], -1).view(n, h * w, 4))
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1) & ~flat.mask
        proposals = torch.log(proposals / (1 - proposals)).masked_fill(~valid[..., None], float("inf"))
        output_memory = self.enc_output_norm(self.enc_output(memory.masked_fill(~valid[..., None], 0.0)))
        return output_memory, proposals, valid

    def forward(
        self,
        srcs: list[Tensor],
        masks: list[Tensor],
        pos_embeds: list[Tensor],
        query_embed: Tensor | None = None,
        padding: str = "exact",
    ) -> TransformerOutput:
        """Run encoder and decoder.

        Args:
            srcs: per level (N, C, H_l, W_l) projected features.
            masks: per level (N, H_l, W_l) bool, True on padding.
            pos_embeds: per level (N, C, H_l, W_l) position encodings.
            query_embed: (Q, 2C) learned queries (position then content); None for two-stage.
            padding: ``"exact"``: two-stage never picks a padded or invalid cell as a query;
                ``"official"``: the original's top-k over all cells, which may pick them (their memory is
                zeroed and their proposal is ``inf``, so their score is the same constant).

        Returns:
            :class:`TransformerOutput`.
        """
        if padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
        if len(srcs) != self.level_embed.shape[0]:
            raise ValueError(f"expected {self.level_embed.shape[0]} feature levels, got {len(srcs)}")
        flat = self.flatten_levels(srcs, masks, pos_embeds)
        memory = self.encoder(
            flat.src,
            flat.spatial_shapes,
            flat.level_start_index,
            flat.valid_ratios,
            flat.pos,
            flat.mask,
            flat.level_sizes(),
        )
        n, s, c = memory.shape
        enc_class = enc_coord_unact = None
        if self.two_stage:
            heads = self.decoder
            if heads.class_embed is None or heads.bbox_embed is None:
                raise RuntimeError("two-stage needs the class and box heads attached to transformer.decoder")
            k = self.two_stage_num_proposals
            if s < k:
                raise ValueError(f"two-stage selects {k} proposals but the encoder has only {s} positions")
            output_memory, proposals, valid = self.encoder_proposals(memory, flat)
            enc_class = heads.class_embed[heads.num_layers](output_memory)
            enc_coord_unact = heads.bbox_embed[heads.num_layers](output_memory) + proposals
            scores = enc_class[..., 0]
            if padding == "exact":  # padded and invalid cells never become queries (their boxes are inf)
                scores = scores.masked_fill(~valid, float("-inf"))
            topk = torch.topk(scores, k, dim=1).indices
            topk_coords = torch.gather(enc_coord_unact, 1, topk[..., None].expand(-1, -1, 4)).detach()
            reference_points = topk_coords.sigmoid()
            pos_trans = self.pos_trans_norm(self.pos_trans(proposal_sine_embed(topk_coords, c // 2)))
            query_pos, tgt = torch.split(pos_trans, c, dim=2)
        else:
            if query_embed is None:
                raise ValueError("query_embed is required unless two_stage")
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos[None].expand(n, -1, -1)
            tgt = tgt[None].expand(n, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        hs, inter_references = self.decoder(
            tgt,
            reference_points,
            memory,
            flat.spatial_shapes,
            flat.level_start_index,
            flat.valid_ratios,
            query_pos,
            flat.mask,
        )
        return TransformerOutput(hs, reference_points, inter_references, enc_class, enc_coord_unact)
