"""Released PETR / PETRv2 checkpoints: the key mapping onto :class:`bev.petr.PETR` and a strict loader.

Our names -> the release's (mmdet3d ``Petr3D``):

- ``backbone.body.`` (ResNet) / ``backbone.`` (VoVNet) -> ``img_backbone.``; ``neck.`` -> ``img_neck.``;
- ``head.decoder.layers.i.`` -> ``pts_bbox_head.transformer.decoder.layers.i.`` with ``self_attn`` ->
  ``attentions.0.attn``, ``cross_attn`` -> ``attentions.1.attn``, ``norm1/2/3`` -> ``norms.0/1/2``,
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

from .official import _listing, _read, _rename
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
    ("cross_attn.", "attentions.1.attn."),
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
    mapping = {}
    for key in model.state_dict():
        prefix, rest = _rename(key, _MODULES, "PETR")
        if prefix.endswith("layers."):
            index, _, inner = rest.partition(".")
            inner_prefix, inner_rest = _rename(inner, _LAYER, f"decoder layer {key!r}")
            rest = f"{index}.{inner_prefix}{inner_rest}"
        mapping[key] = prefix + rest
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("the PETR key map is not one-to-one for this model")
    return mapping


def petr_state_dict(model: PETR) -> dict[str, torch.Tensor]:
    """``model``'s state under the released checkpoints' key names."""
    state = model.state_dict()
    return {theirs: state[ours] for ours, theirs in petr_key_map(model).items()}


def load_petr_checkpoint(
    model: PETR, path_or_state: str | os.PathLike | Mapping[str, object], weights_only: bool = True
) -> dict[str, str]:
    """Fill every parameter and buffer of ``model`` from a released PETR / PETRv2 checkpoint, strictly.

    Args:
        model: a published variant (:func:`bev.petr_builder.build_petr`).
        path_or_state: a ``.pth`` file, ``{"state_dict": ...}`` or a bare state dict, or such a mapping.
        weights_only: passed to ``torch.load``.

    Returns:
        The key map used (ours -> official).

    Raises:
        ValueError: naming missing, unused and shape-mismatched keys, and shared-branch copies that
            differ (nothing is loaded then).
    """
    checkpoint = _read(path_or_state, weights_only)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the checkpoint must be a state dict of tensors, or hold one under 'state_dict'")
    mapping = petr_key_map(model)
    own = model.state_dict()
    official = set(mapping.values())
    problems = []
    missing = [theirs for theirs in mapping.values() if theirs not in state]
    if missing:
        problems.append(f"missing from the checkpoint: {_listing(missing)}")
    unused = [key for key in state if key not in official]
    if unused:
        problems.append(f"unused checkpoint keys: {_listing(unused)}")
    mismatched = [
        f"{theirs} {tuple(state[theirs].shape)} vs ours {tuple(own[ours].shape)}"
        for ours, theirs in mapping.items()
        if theirs in state and state[theirs].shape != own[ours].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if not problems:
        first: dict[int, str] = {}
        for ours, theirs in mapping.items():
            pointer = own[ours].data_ptr()
            if pointer in first and not torch.equal(state[first[pointer]], state[theirs]):
                problems.append(f"{theirs} differs from {first[pointer]}, which the model shares with it")
            first.setdefault(pointer, theirs)
    if problems:
        raise ValueError("PETR checkpoint does not fit the model; " + "; ".join(problems))
    model.load_state_dict({ours: state[theirs] for ours, theirs in mapping.items()}, strict=True)
    return mapping
