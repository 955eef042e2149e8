"""The loss contract of every task: a criterion returns named RAW terms; one weighted total.

Key scheme (both detectors): the last decoder layer's terms are ``loss_<name>`` (``loss_cls``,
``loss_bbox``, ``loss_giou``), decoder layer ``i`` of the earlier ones ``d{i}.loss_<name>``, two-stage
proposals ``enc.loss_<name>``. Other entries (e.g. ``class_error``) are statistics, not losses.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def layer_prefix(layer: int, num_layers: int) -> str:
    """Key prefix of decoder layer ``layer`` of ``num_layers``: "" for the last one, else ``d{layer}.``."""
    return "" if layer == num_layers - 1 else f"d{layer}."


def is_loss(key: str) -> bool:
    """Whether ``key`` names a loss term (``[prefix.]loss_*``) rather than a statistic."""
    return key.rpartition(".")[2].startswith("loss_")


def is_last_layer(key: str) -> bool:
    """Whether ``key`` belongs to the last decoder layer (no ``d{i}.`` / ``enc.`` prefix)."""
    return "." not in key


class Criterion(nn.Module):
    """Base of the task criteria: ``forward(outputs, targets)`` returns the raw terms; ``weight_dict``
    holds a weight for every loss term and :meth:`weighted_total` is the loss to minimize."""

    weight_dict: dict[str, float]

    def weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum(weight_dict[k] * losses[k])`` over the loss terms (statistics are skipped).

        Raises:
            ValueError: a loss term has no weight (e.g. the criterion's layer count differs from the
                model's), naming the terms.
        """
        terms = [key for key in losses if is_loss(key)]
        unweighted = sorted(set(terms) - set(self.weight_dict))
        if unweighted:
            raise ValueError(
                f"no weight for loss terms {unweighted}; weighted: {sorted(self.weight_dict)} "
                "(does the criterion's number of decoder layers match the model's?)"
            )
        return sum(self.weight_dict[key] * losses[key].float() for key in terms)


def mean_box_count(count: int, device: torch.device) -> float:
    """The loss normalizer: ``count`` target boxes of this process's batch, averaged over processes
    when torch.distributed is initialized, at least 1."""
    total = torch.tensor([float(count)], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        world = dist.get_world_size()
    return max(total.item() / world, 1.0)
