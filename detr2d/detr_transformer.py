"""DETR's transformer (Carion et al., ECCV 2020): post-norm encoder and decoder with dense attention.

Attention is ``nn.MultiheadAttention`` (packed ``in_proj_weight``), so the parameter names are the
official checkpoints'. Positions are added to queries and keys, never to values; the encoder has no
final norm; the decoder's LayerNorm is applied to the output of every layer, and all of them are
returned (the auxiliary losses use the first D - 1).

Tensors are batch-first here: (B, S, C) sequences, (B, S) key padding masks True on padding.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .layers.transformer import DETRDecoderLayer, attention, feed_forward


class DETREncoderLayer(nn.Module):
    """Post-norm self-attention + FFN (names ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``).

    Args:
        embed_dims: model width C.
        num_heads: attention heads.
        ffn_dims: hidden width of the FFN.
        dropout: dropout of the attention weights, the residual branches and the FFN.
    """

    def __init__(self, embed_dims: int, num_heads: int, ffn_dims: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(embed_dims, ffn_dims)
        self.linear2 = nn.Linear(ffn_dims, embed_dims)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        """(B, S, C) features, (B, S, C) positions, (B, S) padding mask or None -> (B, S, C)."""
        qk = src + pos
        src = self.norm1(src + self.dropout(attention(self.self_attn, qk, qk, src, mask)))
        return feed_forward(src, self.linear1, self.linear2, self.dropout, self.dropout, self.norm2)


class DETREncoder(nn.Module):
    """``num_layers`` :class:`DETREncoderLayer` (names ``layers.{i}``), no final norm."""

    def __init__(self, layer: DETREncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        """(B, S, C) features, positions and (B, S) padding mask or None -> (B, S, C) memory."""
        for layer in self.layers:
            src = layer(src, pos, mask)
        return src


class DETRDecoder(nn.Module):
    """``num_layers`` :class:`DETRDecoderLayer` (``layers.{i}``) and the LayerNorm (``norm``) applied to
    every layer's output."""

    def __init__(self, layer: DETRDecoderLayer, num_layers: int, embed_dims: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(embed_dims)

    def forward(
        self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, mask: Tensor | None
    ) -> Tensor:
        """Decode; arguments as :meth:`DETRDecoderLayer.forward` -> (D, B, Q, C) normed layer outputs."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, pos, mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class DETRTransformer(nn.Module):
    """Encoder over the flattened feature map, decoder of learned queries starting from zero content.

    Args:
        embed_dims: model width C.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth D.
        ffn_dims: hidden width of the FFNs.
        dropout: dropout everywhere.

    Every parameter of more than one dimension starts Xavier-uniform, as in the original.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        ffn_dims: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.encoder = DETREncoder(
            DETREncoderLayer(embed_dims, num_heads, ffn_dims, dropout), num_encoder_layers
        )
        self.decoder = DETRDecoder(
            DETRDecoderLayer(embed_dims, num_heads, ffn_dims, dropout), num_decoder_layers, embed_dims
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor | None, query_embed: Tensor, pos: Tensor) -> Tensor:
        """Run the transformer on one feature map.

        Args:
            src: (B, C, H, W) projected features.
            mask: (B, H, W) bool, True on padding, or None (nothing padded).
            query_embed: (Q, C) learned query positions.
            pos: (B, C, H, W) position encoding of ``src``.

        Returns:
            (D, B, Q, C): the decoder's normed output after each layer.
        """
        b = src.shape[0]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        key_mask = None if mask is None else mask.flatten(1)
        query_pos = query_embed[None].expand(b, -1, -1)
        memory = self.encoder(src, pos, key_mask)
        return self.decoder(torch.zeros_like(query_pos), query_pos, memory, pos, key_mask)
