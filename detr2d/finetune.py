"""Fine-tuning: start a model from an official or our checkpoint, with a new class head if needed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .builder import family_of
from .runtime.checkpoint import conflicting_aliases, read_state_dict

# The class head: Deformable DETR's one Linear per decoder layer (plus the proposal head for two-stage),
# also attached to the decoder as ``transformer.decoder.class_embed`` in two-stage models; DETR's one
# Linear shared by every layer.
CLASS_HEAD_KEY = re.compile(r"(transformer\.decoder\.)?class_embed(\.\d+)?\.(weight|bias)")


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from_checkpoint` did with every tensor (keys in the model's state_dict order).

    Attributes:
        source: the checkpoint's path, or ``"<state_dict>"``.
        loaded: model keys whose values now come from the checkpoint (including keys that share their
            tensor with a loaded key, e.g. ``transformer.decoder.bbox_embed.*`` with refinement).
        reinitialized: class-head keys present in the checkpoint with another number of classes; their
            modules got the model's own init.
        missing: model keys the checkpoint does not provide; they keep the model's values.
        unexpected: checkpoint keys the model does not have; ignored.
        checkpoint_classes: number of real classes of the checkpoint's head (None if it has none).
        model_classes: number of real classes of the model (DETR's "no object" logit not counted).
    """

    source: str
    loaded: tuple[str, ...]
    reinitialized: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    checkpoint_classes: int | None
    model_classes: int

    def format(self) -> str:
        """A multi-line summary for the log: counts, then every re-initialized, missing and unexpected key."""
        head = ""
        if self.reinitialized:
            head = f" (class head: {self.checkpoint_classes} -> {self.model_classes} classes)"
        lines = [
            f"initialized from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.reinitialized)} re-initialized{head}, {len(self.missing)} missing (kept), "
            f"{len(self.unexpected)} unexpected (ignored)"
        ]
        for title, keys in (
            ("re-initialized", self.reinitialized),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if keys:
                lines.append(f"  {title}: {', '.join(keys)}")
        return "\n".join(lines)


def _head_rows(state: Mapping[str, Tensor]) -> int | None:
    """Rows (logits) of the first class-head weight in ``state`` (None if there is none)."""
    for key, value in state.items():
        if CLASS_HEAD_KEY.fullmatch(key) and key.endswith(".weight"):
            return int(value.shape[0])
    return None


def init_from_checkpoint(
    model: nn.Module, path_or_state: str | os.PathLike | Mapping, num_classes: int | None = None
) -> InitReport:
    """Load a checkpoint non-strictly into a freshly built model, for fine-tuning.

    Tensors whose key and shape match are copied. Class-head tensors (``class_embed.*`` and
    ``transformer.decoder.class_embed.*``) whose number of classes differs are not loaded: their
    modules are re-initialized with the model's own init (PyTorch's Linear init; for Deformable DETR
    the bias :data:`~detr2d.deformable_detr.CLASS_PRIOR_BIAS`). Keys only the model has keep their values;
    keys only the checkpoint has are ignored. :meth:`InitReport.format` is the log line.

    Args:
        model: the model to fill, a Deformable DETR or a DETR (its config decides the architecture and
            the class count).
        path_or_state: an official release file, our checkpoint (``{"model": state_dict, ...}``) or
            a state_dict (see :func:`detr2d.read_state_dict`).
        num_classes: the class count the caller expects the model to have (e.g. from the dataset);
            None skips this check.

    Raises:
        ValueError: ``num_classes`` differs from the model's; a tensor other than the class head's
            has another shape in the checkpoint (the message names every such key with both
            shapes); or the checkpoint holds different values for keys the model shares one tensor
            under (e.g. a refinement checkpoint, with one head per layer, into a model without
            refinement, whose layers share one head).
    """
    head = family_of(model)
    model_classes = _head_rows(model.state_dict()) - head.extra_logits
    if num_classes is not None and num_classes != model_classes:
        raise ValueError(f"num_classes is {num_classes} but the model has {model_classes} classes")
    state = read_state_dict(path_or_state)
    source = "<state_dict>" if isinstance(path_or_state, Mapping) else os.fspath(path_or_state)
    own = model.state_dict(keep_vars=True)

    to_load: dict[str, Tensor] = {}
    reinit: set[str] = set()
    mismatched = []
    for key, tensor in own.items():
        if key not in state:
            continue
        theirs = state[key]
        if theirs.shape == tensor.shape:
            to_load[key] = theirs
        elif CLASS_HEAD_KEY.fullmatch(key) and theirs.shape[1:] == tensor.shape[1:]:
            reinit.add(key)
        else:
            mismatched.append(f"{key}: checkpoint {tuple(theirs.shape)} vs model {tuple(tensor.shape)}")
    if mismatched:
        raise ValueError(f"{source}: shapes differ for {len(mismatched)} keys: {'; '.join(mismatched)}")

    conflicting_aliases(model, to_load, source)
    # Keys sharing one tensor (shared heads, heads attached to the decoder) get one status.
    aliases: dict[int, list[str]] = {}
    for key, tensor in own.items():
        aliases.setdefault(id(tensor), []).append(key)
    status: dict[str, str] = {}
    for keys in aliases.values():
        given = [k for k in keys if k in to_load]
        group = "loaded" if given else "reinitialized" if reinit.intersection(keys) else "missing"
        status.update(dict.fromkeys(keys, group))

    model.load_state_dict(to_load, strict=False)
    modules = {id(m): m for m in (model.get_submodule(k.rpartition(".")[0]) for k in reinit)}
    with torch.no_grad():
        for module in modules.values():
            module.reset_parameters()
            if head.class_bias is not None:
                nn.init.constant_(module.bias, head.class_bias)

    def keys_with(group: str) -> tuple[str, ...]:
        return tuple(k for k in own if status[k] == group)

    rows = _head_rows(state)
    return InitReport(
        source=source,
        loaded=keys_with("loaded"),
        reinitialized=keys_with("reinitialized"),
        missing=keys_with("missing"),
        unexpected=tuple(k for k in state if k not in own),
        checkpoint_classes=None if rows is None else rows - head.extra_logits,
        model_classes=model_classes,
    )
