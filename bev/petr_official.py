"""Released PETR / PETRv2 checkpoints: the key mapping onto :class:`bev.petr.PETR` and a strict loader.

Our names -> the release's (mmdet3d ``Petr3D``):

- ``backbone.body.`` (ResNet) / ``backbone.`` (VoVNet) -> ``img_backbone.``; ``neck.`` -> ``img_neck.``;
- ``head.decoder.layers.i.`` -> ``pts_bbox_head.transformer.decoder.layers.i.`` with ``self_attn`` ->
  ``attentions.0.attn``, ``multihead_attn`` -> ``attentions.1.attn``, ``norm1/2/3`` -> ``norms.0/1/2``,
  ``linear1`` / ``linear2`` -> ``ffns.0.layers.0.0`` / ``ffns.0.layers.1``;
- ``head.decoder.post_norm`` -> ``pts_bbox_head.transformer.decoder.post_norm``; other ``head.*`` ->
  ``pts_bbox_head.*`` (same names).

PETR v1 stores its single cls / reg branch once per decoder layer; the loader requires those copies to
be equal (they are one tensor in the original).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .official import load_official_checkpoint, rename_keys
from .petr import PETR

_MODULES: tuple[tuple[str, str], ...] = (
    ("backbone.body.", "img_backbone."),
    ("backbone.", "img_backbone."),
    ("neck.", "img_neck."),
    ("head.decoder.layers.", "pts_bbox_head.transformer.decoder.layers."),
    ("head.decoder.post_norm.", "pts_bbox_head.transformer.decoder.post_norm."),
    ("head.", "pts_bbox_head."),
)
_LAYER: tuple[tuple[str, str], ...] = (
    ("self_attn.", "attentions.0.attn."),
    ("multihead_attn.", "attentions.1.attn."),
    ("norm1.", "norms.0."),
    ("norm2.", "norms.1."),
    ("norm3.", "norms.2."),
    ("linear1.", "ffns.0.layers.0.0."),
    ("linear2.", "ffns.0.layers.1."),
)


def petr_key_map(model: PETR) -> dict[str, str]:
    """Our state_dict key -> the released checkpoints' key, for every entry of ``model.state_dict()``.

    Raises:
        ValueError: naming a key without an official counterpart.
    """
    return rename_keys(model, _MODULES, lambda prefix: _LAYER, "the PETR")


def petr_state_dict(model: PETR) -> dict[str, torch.Tensor]:
    """``model``'s state under the released checkpoints' key names."""
    state = model.state_dict()
    return {theirs: state[ours] for ours, theirs in petr_key_map(model).items()}


def load_petr_checkpoint(
    model: PETR,
    path_or_state: str | os.PathLike | Mapping[str, object],
    weights_only: bool = True,
    source: str | None = None,
) -> dict[str, str]:
    """Fill every parameter and buffer of ``model`` from a released PETR / PETRv2 checkpoint, strictly:
    :func:`bev.official.load_official_checkpoint` with :func:`petr_key_map` (PETR v1's shared branch
    copies must be equal).

    Returns:
        The key map used (ours -> official).
    """
    return load_official_checkpoint(model, path_or_state, weights_only, source, key_map=petr_key_map(model))
