"""Checkpoints in the official format: ``{'model': state_dict, ...}``, read without unpickling code."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping

import torch
from torch import Tensor, nn

_LIST_AT_MOST = 10


def _short(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _LIST_AT_MOST} more)" if len(keys) > _LIST_AT_MOST else ""
    return ", ".join(keys[:_LIST_AT_MOST]) + more


def read_state_dict(path_or_state: str | os.PathLike | Mapping) -> dict[str, Tensor]:
    """The model state_dict inside a checkpoint file or mapping.

    Accepts a bare state_dict or the official wrapper ``{'model': state_dict, 'optimizer': ...,
    'args': Namespace, ...}``. Files are read with ``torch.load(weights_only=True)``; the only
    class allowed besides tensors and containers is ``argparse.Namespace`` (the official ``args``).
    """
    if isinstance(path_or_state, Mapping):
        obj = path_or_state
    else:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path_or_state, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = _short(sorted(map(str, obj))) if isinstance(obj, Mapping) else "-"
        raise ValueError(
            "expected a state_dict (name -> tensor) or a {'model': state_dict} wrapper, got "
            f"{type(obj).__name__} with keys [{keys}]"
        )
    return dict(obj)


def load_checkpoint(
    model: nn.Module, path_or_state: str | os.PathLike | Mapping, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load weights into ``model``.

    Args:
        model: the model to fill.
        path_or_state: checkpoint path, bare state_dict, or ``{'model': state_dict}`` wrapper.
        strict: raise ``ValueError`` on missing or unexpected keys (shape mismatches always raise).

    Returns:
        (missing keys, unexpected keys), both empty when ``strict``.
    """
    state = read_state_dict(path_or_state)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ValueError(f"shape mismatch for {len(mismatched)} keys: {_short(mismatched)}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not match the model: {len(missing)} missing keys [{_short(missing)}], "
            f"{len(unexpected)} unexpected keys [{_short(unexpected)}]"
        )
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def save_model_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``{'model': model.state_dict()}`` atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"model": model.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
