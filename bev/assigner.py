"""One-to-one Hungarian assignment of predicted to ground-truth boxes (BEVFormer's HungarianAssigner3D)."""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from .box_coder import CODE_SIZE

FOCAL_COST_EPS = 1e-12


def focal_cost(cls_logits: torch.Tensor, gt_labels: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Focal classification cost (mmdet's ``FocalLossCost``) of every query for every ground truth.

    Args:
        cls_logits: (Q, C) logits; gt_labels: (K,) int64 class indices.

    Returns:
        (Q, K) cost = pos - neg with pos = -alpha (1 - p)^gamma log(p), neg = -(1 - alpha) p^gamma log(1 - p).
    """
    prob = cls_logits.sigmoid()
    neg = -(1 - prob + FOCAL_COST_EPS).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + FOCAL_COST_EPS).log() * alpha * (1 - prob).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


class HungarianAssigner3D:
    """Minimum-cost one-to-one matching with cost = cls_weight * focal + reg_weight * L1(code[:8]).

    The L1 cost compares the first ``num_reg_dims`` (8: centre, log size, sin/cos yaw) entries of the
    predicted code with the encoded ground truth; velocity is left out.

    Args:
        cls_weight: weight of the focal cost (2.0).
        reg_weight: weight of the L1 cost (0.25).
        alpha, gamma: focal parameters (0.25, 2.0).
        num_reg_dims: code entries in the L1 cost (8).
    """

    def __init__(
        self,
        cls_weight: float = 2.0,
        reg_weight: float = 0.25,
        alpha: float = 0.25,
        gamma: float = 2.0,
        num_reg_dims: int = 8,
    ) -> None:
        if not 0 < num_reg_dims <= CODE_SIZE:
            raise ValueError(f"num_reg_dims must be in 1..{CODE_SIZE}, got {num_reg_dims}")
        self.cls_weight = cls_weight
        self.reg_weight = reg_weight
        self.alpha = alpha
        self.gamma = gamma
        self.num_reg_dims = num_reg_dims

    def cost_matrix(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_code: torch.Tensor,
    ) -> torch.Tensor:
        """(Q, K) matching cost; non-finite entries become 100 (as the original's ``nan_to_num``).

        Args:
            cls_logits: (Q, C); box_code: (Q, 10); gt_labels: (K,) int64; gt_code: (K, 10) encoded targets.
        """
        d = self.num_reg_dims
        reg = torch.cdist(box_code[:, :d], gt_code[:, :d], p=1)
        cost = (
            self.cls_weight * focal_cost(cls_logits, gt_labels, self.alpha, self.gamma)
            + self.reg_weight * reg
        )
        return torch.nan_to_num(cost, nan=100.0, posinf=100.0, neginf=-100.0)

    @torch.no_grad()
    def assign(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_code: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Match each ground truth to a distinct query (all of them when K <= Q).

        Args:
            cls_logits: (Q, C); box_code: (Q, 10); gt_labels: (K,) int64; gt_code: (K, 10).

        Returns:
            ``query_index`` (M,) and ``gt_index`` (M,) int64 on the inputs' device, M = min(Q, K),
            sorted by query index.
        """
        num_queries, num_gt = box_code.shape[0], gt_code.shape[0]
        if cls_logits.shape[0] != num_queries or gt_labels.shape != (num_gt,):
            raise ValueError(
                f"inconsistent shapes: cls_logits {tuple(cls_logits.shape)}, "
                f"box_code {tuple(box_code.shape)}, "
                f"gt_labels {tuple(gt_labels.shape)}, gt_code {tuple(gt_code.shape)}"
            )
        device = box_code.device
        if num_gt == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return empty, empty.clone()
        cost = self.cost_matrix(cls_logits.float(), box_code.float(), gt_labels, gt_code.float())
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        return (
            torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.as_tensor(cols, dtype=torch.int64, device=device),
        )
