"""Released BEVFormer / DETR3D checkpoints: the key mapping onto our modules and a strict loader.

The published variants (``bevformer_tiny|small|base``, ``detr3d`` of :mod:`bev.builder`) have exactly
the parameters and buffers of the original models built from their published configs: one tensor of
the same shape for every key of a released checkpoint (mmdet3d names ``img_backbone.*``,
``img_neck.*``, ``pts_bbox_head.*``). Our modules keep our names; :func:`official_key_map` gives the
one-to-one correspondence:

- ``backbone.body.`` -> ``img_backbone.``, ``neck.`` -> ``img_neck.``;
- ``encoder.bev_embedding`` -> ``pts_bbox_head.bev_embedding``, ``encoder.row_embed`` / ``col_embed``
  -> ``pts_bbox_head.positional_encoding.*``, other ``encoder.*`` (``cams_embeds``, ``level_embeds``,
  ``can_bus_mlp``) -> ``pts_bbox_head.transformer.*``;
- encoder layer i -> ``pts_bbox_head.transformer.encoder.layers.i``: ``temporal_self_attention`` ->
  ``attentions.0``, ``spatial_cross_attention.output_proj`` -> ``attentions.1.output_proj``, its other
  projections -> ``attentions.1.deformable_attention``, ``norm1/2/3`` -> ``norms.0/1/2``;
- decoder layer i -> ``pts_bbox_head.transformer.decoder.layers.i``: ``self_attn`` ->
  ``attentions.0.attn``, ``cross_attn`` -> ``attentions.1``, the norms in operation order (the BEV
  decoder layer, detr2d's, calls its norm after self-attention ``norm2``);
- both: ``linear1`` / ``linear2`` -> ``ffns.0.layers.0.0`` / ``ffns.0.layers.1``;
  ``head.reference_points`` -> ``pts_bbox_head.transformer.reference_points``, other ``head.*``
  (``code_weights``, ``query_embedding``, ``cls_branches``, ``reg_branches``) -> ``pts_bbox_head.*``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from detr2d.runtime.checkpoint import conflicting_aliases, key_mismatch_message, load_torch_file

from .decoder import BEVDecoderLayer
from .detector import MultiViewDetector3D

# (our prefix, official prefix), first match wins.
_MODULES: tuple[tuple[str, str], ...] = (
    ("backbone.body.", "img_backbone."),
    ("neck.", "img_neck."),
    ("encoder.layers.", "pts_bbox_head.transformer.encoder.layers."),
    ("encoder.bev_embedding.", "pts_bbox_head.bev_embedding."),
    ("encoder.row_embed.", "pts_bbox_head.positional_encoding.row_embed."),
    ("encoder.col_embed.", "pts_bbox_head.positional_encoding.col_embed."),
    ("encoder.", "pts_bbox_head.transformer."),
    ("head.layers.", "pts_bbox_head.transformer.decoder.layers."),
    ("head.reference_points.", "pts_bbox_head.transformer.reference_points."),
    ("head.", "pts_bbox_head."),
)
_FFN: tuple[tuple[str, str], ...] = (("linear1.", "ffns.0.layers.0.0."), ("linear2.", "ffns.0.layers.1."))
_ENCODER_LAYER: tuple[tuple[str, str], ...] = (
    ("temporal_self_attention.", "attentions.0."),
    ("spatial_cross_attention.output_proj.", "attentions.1.output_proj."),
    ("spatial_cross_attention.", "attentions.1.deformable_attention."),
    ("norm1.", "norms.0."),
    ("norm2.", "norms.1."),
    ("norm3.", "norms.2."),
    *_FFN,
)
_ATTENTIONS: tuple[tuple[str, str], ...] = (
    ("self_attn.", "attentions.0.attn."),
    ("cross_attn.", "attentions.1."),
)
# detr2d's deformable decoder layer: norm2 after self-attention, norm1 after cross-attention.
_BEV_DECODER_LAYER = (
    *_ATTENTIONS,
    ("norm2.", "norms.0."),
    ("norm1.", "norms.1."),
    ("norm3.", "norms.2."),
    *_FFN,
)
_DETR3D_DECODER_LAYER = (
    *_ATTENTIONS,
    ("norm1.", "norms.0."),
    ("norm2.", "norms.1."),
    ("norm3.", "norms.2."),
    *_FFN,
)


def _rename(key: str, rules: Sequence[tuple[str, str]], where: str) -> tuple[str, str]:
    for ours, theirs in rules:
        if key.startswith(ours):
            return theirs, key[len(ours) :]
    raise ValueError(f"{where}: no official name for {key!r} (known prefixes: {[r[0] for r in rules]})")


def official_key_map(model: MultiViewDetector3D) -> dict[str, str]:
    """Our state_dict key -> the released checkpoints' key, for every entry of ``model.state_dict()``.

    Raises:
        ValueError: naming a key that has no official counterpart (e.g. a module of ours).
    """
    bev_decoder = isinstance(model.head.layers[0], BEVDecoderLayer)
    decoder_layer = _BEV_DECODER_LAYER if bev_decoder else _DETR3D_DECODER_LAYER
    return rename_keys(
        model,
        _MODULES,
        lambda prefix: _ENCODER_LAYER if prefix.endswith("encoder.layers.") else decoder_layer,
        "the official",
    )


def rename_keys(
    model: nn.Module,
    modules: Sequence[tuple[str, str]],
    layer_rules: Callable[[str], Sequence[tuple[str, str]]],
    what: str,
) -> dict[str, str]:
    """Our key -> the release's key of every entry of ``model.state_dict()``: the first matching
    ``modules`` prefix rule, then, under a prefix ending in ``layers.``, the rules ``layer_rules(prefix)``
    for what follows the layer index.

    Raises:
        ValueError: naming a key without a counterpart, or a map that is not one-to-one (``what`` names
            the map).
    """
    mapping = {}
    for key in model.state_dict():
        prefix, rest = _rename(key, modules, "model")
        if prefix.endswith("layers."):
            index, _, inner = rest.partition(".")
            inner_prefix, inner_rest = _rename(inner, layer_rules(prefix), f"layer {key!r}")
            rest = f"{index}.{inner_prefix}{inner_rest}"
        mapping[key] = prefix + rest
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"{what} key map is not one-to-one for this model")
    return mapping


def official_state_dict(model: MultiViewDetector3D) -> dict[str, torch.Tensor]:
    """``model``'s state under the released checkpoints' key names (e.g. to export it)."""
    state = model.state_dict()
    return {theirs: state[ours] for ours, theirs in official_key_map(model).items()}


def _read(path_or_state: str | os.PathLike | Mapping[str, object], weights_only: bool) -> Mapping:
    if isinstance(path_or_state, Mapping):
        return path_or_state
    if weights_only:
        try:
            return load_torch_file(path_or_state)
        except ValueError as error:
            if "Python global" not in str(error):
                raise
            raise ValueError(
                f"{error}; a trusted file whose metadata holds other objects loads with weights_only=False"
            ) from error
    return torch.load(path_or_state, map_location="cpu", weights_only=False)


def load_official_checkpoint(
    model: nn.Module,
    path_or_state: str | os.PathLike | Mapping[str, object],
    weights_only: bool = True,
    source: str | None = None,
    key_map: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Fill every parameter and buffer of ``model`` from a released BEVFormer / DETR3D checkpoint (or,
    with its ``key_map``, another released BEV detector: PETR / PETRv2).

    Strict: every official key must be used, every tensor of the model filled, every shape equal, and
    tensors the model shares (PETR's one classification / regression branch, written six times) must
    come with equal copies.

    Args:
        model: a published variant (``build_bev_model("bevformer_tiny" | ... | "detr3d")``).
        path_or_state: a ``.pth`` file, mmdet3d's ``{"state_dict": ..., "meta": ...}`` or a bare state
            dict, or such a mapping already loaded.
        weights_only: read the file with :func:`detr2d.runtime.checkpoint.load_torch_file` (tensors and
            containers only; errors name the file); False: ``torch.load`` of a trusted file.
        source: how messages name the checkpoint when ``path_or_state`` is a mapping (e.g. the file it
            was read from); default: the path, or ``"<state_dict>"``.
        key_map: ours -> official key of every entry of ``model.state_dict()``; default:
            :func:`official_key_map` (BEVFormer / DETR3D).

    Returns:
        The key map used (ours -> official).

    Raises:
        ValueError: the file is unreadable, or the checkpoint does not fit: the path, then the counts
            and a few examples of the missing, unused and shape-mismatched keys
            (:func:`detr2d.runtime.checkpoint.key_mismatch_message`); nothing is loaded then.
    """
    if source is None:
        source = "<state_dict>" if isinstance(path_or_state, Mapping) else os.fspath(path_or_state)
    checkpoint = _read(path_or_state, weights_only)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"checkpoint {source} must be a state dict of tensors, or hold one under 'state_dict'"
        )
    mapping = dict(official_key_map(model) if key_map is None else key_map)
    own = model.state_dict()
    missing = [theirs for theirs in mapping.values() if theirs not in state]
    unused = [key for key in state if key not in set(mapping.values())]
    mismatched = [
        f"{theirs}: checkpoint {tuple(state[theirs].shape)} vs model {tuple(own[ours].shape)}"
        for ours, theirs in mapping.items()
        if theirs in state and state[theirs].shape != own[ours].shape
    ]
    if missing or unused or mismatched:
        raise ValueError("official " + key_mismatch_message(source, missing, unused, mismatched))
    ours_state = {ours: state[theirs] for ours, theirs in mapping.items()}
    conflicting_aliases(model, ours_state, source)
    model.load_state_dict(ours_state, strict=True)
    return mapping
