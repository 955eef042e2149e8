"""Training checkpoints: atomic writes, RNG state capture, exact resume.

A training checkpoint is ``{"model", "optimizer", "lr_scheduler", "epoch", "rng", "config"}`` (plus
``"scaler"`` with fp16 AMP). ``model`` is the unwrapped model's state_dict in the official key format,
so the file also loads wherever an official release file (``{"model": state_dict}``) does. ``epoch``
is the last completed epoch (0-based); ``rng`` holds every process's RNG states, in rank order.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file so that ``path`` holds either its old content or the complete new one.

    ``write`` fills a temporary file in the same folder, which is flushed, fsynced and renamed over
    ``path`` (``os.replace`` is atomic); the folder is fsynced so the rename survives a power cut. If
    anything fails (or the process dies), ``path`` is untouched; on an exception the temporary file is
    removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


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


def save_training_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    rng_states: list[dict[str, Any]],
    config: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write a training checkpoint atomically (``model`` must be unwrapped, not DDP)."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "epoch": epoch,
        "rng": rng_states,
        "config": config,
    }
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    atomic_save(checkpoint, path)


def load_training_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    world_size: int,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Restore model, optimizer, scheduler, AMP scaler and this process's RNG state.

    A checkpoint written by a different number of processes still resumes, with a warning: its RNG
    states do not map onto the ranks, so the random streams (dropout) differ from an uninterrupted run.

    Returns:
        The epoch to start from (the saved epoch + 1).

    Raises:
        KeyError: the file is not a training checkpoint (e.g. a bare model file).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"model", "optimizer", "lr_scheduler", "epoch", "rng"} - set(checkpoint)
    if missing:
        raise KeyError(
            f"{path} is not a training checkpoint (missing {sorted(missing)}); cannot resume from it"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
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
    return int(checkpoint["epoch"]) + 1
