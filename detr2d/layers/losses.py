"""Losses shared by the detectors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al., 2017) on logits, without reduction.

    ``alpha_t (1 - p_t)^gamma BCE(logits, targets)`` with ``p_t = p`` for positives and ``1 - p``
    for negatives, ``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives (alpha < 0: no
    weighting). ``logits`` and ``targets`` have the same shape; targets are in [0, 1].
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss
