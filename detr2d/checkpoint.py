"""Checkpoints in the official format: ``{'model': state_dict, ...}``, read without unpickling code.

:func:`load_torch_file` reads any file written by ``torch.save`` (model or training checkpoint) and turns
every way it can be unreadable (empty, truncated, garbage, a pickled class) into one ``ValueError`` naming
the file. Files are written atomically through a temporary ``.NAME.tmp.PID`` in the same folder
(:func:`temporary_path`); :func:`remove_stale_temporaries` deletes those left by processes that died.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .runtime.io import atomic_save

logger = logging.getLogger(__name__)

_LIST_AT_MOST = 10
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(?P<reason>[^\n]+)")
_UNPICKLER_GLOBAL = re.compile(r"GLOBAL (?P<name>\S+)")


def _short(keys: list[str]) -> str:
    more = f" ... (+{len(keys) - _LIST_AT_MOST} more)" if len(keys) > _LIST_AT_MOST else ""
    return ", ".join(keys[:_LIST_AT_MOST]) + more


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The object in a ``torch.save`` file, read on the CPU with ``weights_only=True``.

    Besides tensors and containers, the only class allowed is ``argparse.Namespace`` (the ``args`` of the
    official checkpoints); unpickling other classes could run code, so they are refused.

    Args:
        path: the file.
        what: what it should hold, used in messages (e.g. "training checkpoint").

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, empty, truncated, not a PyTorch file or holds a pickled class;
            the message names the file, its size and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a directory; expected a file written by torch.save")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} file {path} is empty (0 bytes); expected a file written by torch.save")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        RuntimeError,
        KeyError,
        ValueError,
        zipfile.BadZipFile,
    ) as error:
        message = str(error)
        unpickler = _UNPICKLER_REASON.search(message)
        pickled_class = _UNPICKLER_GLOBAL.search(unpickler["reason"]) if unpickler else None
        if pickled_class:
            reason = (
                f"it refers to the Python global {pickled_class['name']}, which is not loaded because "
                "unpickling it could run code; expected tensors, containers and numbers only"
            )
        else:
            detail = unpickler["reason"] if unpickler else message.split(". ")[0]
            reason = (
                f"it is truncated, corrupt or not written by torch.save ({type(error).__name__}: {detail})"
            )
        raise ValueError(f"cannot read {what} file {path} ({size} bytes): {reason}") from error


def read_state_dict(path_or_state: str | os.PathLike | Mapping) -> dict[str, Tensor]:
    """The model state_dict inside a checkpoint file or mapping.

    Accepts a bare state_dict or the official wrapper ``{'model': state_dict, 'optimizer': ...,
    'args': Namespace, ...}``. Files are read with :func:`load_torch_file` (errors name the file).
    """
    obj = path_or_state if isinstance(path_or_state, Mapping) else load_torch_file(path_or_state)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        keys = _short(sorted(map(str, obj))) if isinstance(obj, Mapping) else "-"
        source = "" if isinstance(path_or_state, Mapping) else f" in {os.fspath(path_or_state)}"
        raise ValueError(
            f"expected a state_dict (name -> tensor) or a {{'model': state_dict}} wrapper{source}, got "
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
    """Write ``{'model': model.state_dict()}`` atomically (:func:`detr2d.runtime.io.atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": model.state_dict()}, path)
