"""Mixed precision: one autocast context and one gradient scaler for every task."""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = (None, "bf16", "fp16")


def check_amp(amp: str | None) -> None:
    """Raise ``ValueError`` unless ``amp`` is None, ``"bf16"`` or ``"fp16"``."""
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp must be None, 'bf16' or 'fp16', got {amp!r}")


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` (CPU or CUDA) in bf16 / fp16; nothing for ``amp=None``."""
    check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str | None) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (whose gradients underflow without one); None otherwise."""
    check_amp(amp)
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None
