"""Training checkpoints: RNG state capture, atomic writes, exact resume.

A training checkpoint is ``{"model", "optimizer", "lr_scheduler", "epoch", "rng", "config", "task",
"class_names"}`` (plus ``"scaler"`` with fp16 AMP). ``model`` is the unwrapped model's state_dict in
the official key format, so the file also loads wherever an official release file
(``{"model": state_dict}``) does. ``epoch`` is the last completed epoch (0-based); ``rng`` holds every
process's RNG states, in rank order.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_torch_file
from .io import atomic_save

logger = logging.getLogger(__name__)

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
            "%s was written by %d process(es), this run has %d: RNG states not restored, the resumed run "
            "is not bit-identical to an uninterrupted one",
            path,
            len(checkpoint["rng"]),
            world_size,
        )
