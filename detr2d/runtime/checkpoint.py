"""Checkpoints: model weights in the official format and training checkpoints with exact resume.

Model weights are ``{'model': state_dict, ...}`` (the official Deformable DETR / DETR release layout; bare
state_dicts load too). :func:`load_torch_file` reads any file written by ``torch.save`` without unpickling
code and turns every way it can be unreadable (empty, truncated, garbage, a pickled class, a newer
format) into one ``ValueError`` naming the file; files are written atomically (:mod:`.io`).

A training checkpoint is ``{"model", "optimizer", "lr_scheduler", "epoch", "rng", "config", "task",
"class_names"}`` (plus ``"scaler"`` with fp16 AMP). ``model`` is the unwrapped model's state_dict in
the official key format, so the file also loads wherever an official release file
(``{"model": state_dict}``) does. ``epoch`` is the last completed epoch (0-based); ``rng`` holds every
process's RNG states, in rank order.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import random
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .io import atomic_save
from .logs import plural

logger = logging.getLogger(__name__)

_LIST_AT_MOST = 10
_EXAMPLES = 5
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:\s*(?P<reason>[^\n]+)")
_UNPICKLER_GLOBAL = re.compile(r"GLOBAL (?P<name>[\w.]+)")
_ENFORCE_PREFIX = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")
_NEWER_FORMAT = re.compile(r"version \d+, but the maximum supported version for reading is \d+")


def _short(keys: list[str], limit: int = _LIST_AT_MOST) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _unreadable_reason(error: BaseException) -> str:
    """Why ``torch.load`` failed, in words: a refused Python global (pickled code or classes), a file
    format newer than this PyTorch (torch's own sentence kept), or truncated / corrupt data."""
    message = str(error)
    pickled_global = _UNPICKLER_GLOBAL.search(message) if isinstance(error, pickle.UnpicklingError) else None
    if pickled_global:
        return (
            f"it refers to a Python global that is not allowed ({pickled_global['name']}): it is not loaded "
            "because unpickling it could run code; expected tensors, containers and numbers only"
        )
    unpickler = _UNPICKLER_REASON.search(message)
    detail = unpickler["reason"] if unpickler else _ENFORCE_PREFIX.sub("", message.strip()).split("\n")[0]
    if _NEWER_FORMAT.search(detail):
        return f"it was written by a newer PyTorch than this one ({torch.__version__}): {detail}"
    return f"it is truncated, corrupt or not written by torch.save ({type(error).__name__}: {detail})"


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
        raise ValueError(
            f"cannot read {what} file {path} ({size} bytes): {_unreadable_reason(error)}"
        ) from error


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


def key_mismatch_message(
    source: str, missing: list[str], unexpected: list[str], mismatched: list[str]
) -> str:
    """One message for a checkpoint that does not fit a model: the checkpoint's path (or what it is),
    then the count and a few examples of the missing keys, the unexpected keys and the shape mismatches
    (``"KEY: checkpoint SHAPE vs model SHAPE"``)."""
    parts = [
        f"{len(keys)} {title}" + (f" [{_short(keys, _EXAMPLES)}]" if keys else "")
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
    ]
    return f"checkpoint {source} does not fit the model: " + ", ".join(parts)


def _identical(a: Tensor, b: Tensor) -> bool:
    """Equal shapes and values, NaN equal to NaN (copies of one tensor)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return a.is_floating_point() and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def conflicting_aliases(
    model: nn.Module, state: Mapping[str, Tensor], source: str, keys: Iterable[str] | None = None
) -> None:
    """Refuse a checkpoint that holds different values under keys the model shares one tensor under.

    The released Deformable DETR files store some tensors twice (e.g. ``class_embed.*`` and
    ``transformer.decoder.class_embed.*`` in two-stage models); loading one of two different values
    silently would depend on the key order.

    Args:
        model: the model whose state_dict aliases decide which keys must agree.
        state: the checkpoint's state_dict.
        source: the checkpoint's path (or what it is), for the message.
        keys: the checkpoint keys that will be loaded (default: all of ``state``).

    Raises:
        ValueError: naming the model's shared keys and the checkpoint keys that disagree.
    """
    given_keys = set(state if keys is None else keys)
    aliases: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(key)
    for shared in aliases.values():
        given = [k for k in shared if k in given_keys]
        differing = [k for k in given[1:] if not _identical(state[k], state[given[0]])]
        if differing:
            raise ValueError(
                f"checkpoint {source}: the model shares one tensor under {shared}, but the checkpoint holds "
                f"different values for {[given[0], *differing]} (a checkpoint of another variant, or "
                "an edited file?)"
            )


def load_checkpoint(
    model: nn.Module,
    path_or_state: str | os.PathLike | Mapping,
    strict: bool = True,
    source: str | None = None,
) -> tuple[list[str], list[str]]:
    """Load weights into ``model``.

    Args:
        model: the model to fill.
        path_or_state: checkpoint path, bare state_dict, or ``{'model': state_dict}`` wrapper.
        strict: raise ``ValueError`` on missing or unexpected keys (shape mismatches always raise).
        source: how messages name the checkpoint when ``path_or_state`` is a mapping (e.g. the file it
            was read from); default: the path, or ``"<state_dict>"``.

    Returns:
        (missing keys, unexpected keys), both empty when ``strict``.

    Raises:
        ValueError: the file is unreadable; the checkpoint does not fit (:func:`key_mismatch_message`:
            the path, counts and examples of missing / unexpected / mismatched keys); or it holds
            different values under keys the model shares (:func:`conflicting_aliases`).
    """
    if source is None:
        source = "<state_dict>" if isinstance(path_or_state, Mapping) else os.fspath(path_or_state)
    state = read_state_dict(path_or_state)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(key_mismatch_message(source, missing, unexpected, mismatched))
    conflicting_aliases(model, state, source, [k for k in state if k in own])
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def save_model_state(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``{'model': model.state_dict()}`` atomically (:func:`detr2d.runtime.io.atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": model.state_dict()}, path)


TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "rng")


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, NumPy's global generator, torch CPU and (if present) CUDA.

    Only tensors and plain Python values, so a checkpoint holding it loads with ``weights_only=True``.
    """
    # NumPy's legacy global generator is the one third-party code draws from, hence NPY002 below.
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
    numpy_state = (
        name,
        torch.from_numpy(keys.astype(np.int64)),
        int(pos),
        int(has_gauss),
        float(cached_gaussian),
    )
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_training_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (the keys of the module docstring) atomically."""
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise KeyError(f"a training checkpoint needs {missing}")
    atomic_save(state, path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The content of a training checkpoint (``weights_only`` load).

    Raises:
        ValueError: the file cannot be read as a checkpoint, or is not a training checkpoint (e.g. a
            bare model file); the message names the file.
    """
    checkpoint = load_torch_file(path, "training checkpoint")
    missing = set(TRAINING_KEYS) - set(checkpoint) if isinstance(checkpoint, dict) else set(TRAINING_KEYS)
    if missing:
        raise ValueError(
            f"{path} is not a training checkpoint (missing {sorted(missing)}); cannot resume from it "
            "(to start a new run from its weights use init_from)"
        )
    return checkpoint


def restore_rng_of_rank(checkpoint: dict[str, Any], path: str | Path, rank: int, world_size: int) -> None:
    """Restore this process's RNG state from a checkpoint written by ``world_size`` processes.

    A checkpoint written by a different number of processes still resumes, with a warning: its RNG
    states do not map onto the ranks, so the random streams (dropout) differ from an uninterrupted run.
    """
    if len(checkpoint["rng"]) == world_size:
        restore_rng_state(checkpoint["rng"][rank])
    else:
        logger.warning(
            "%s was written by %s, this run has %d: RNG states not restored, the resumed run "
            "is not bit-identical to an uninterrupted one",
            path,
            plural(len(checkpoint["rng"]), "process", "processes"),
            world_size,
        )
