"""Causal debiasing pieces of LLM4Rec (Ma et al. 2025, eq. 13-18).

- Inverse propensity weighting (eq. 13-14; Schnabel et al. 2016): an observed (user, item) pair was
  exposed with propensity p_ui, estimated here as (pop_i / max pop)^eta_item * (n_u / max n)^eta_user,
  the power-law form of Yang et al. (RecSys 2018). Weights 1/p are clipped (variance) and
  self-normalised per batch (SNIPS, Swaminathan & Joachims 2015).
- Popularity deconfounding (eq. 15; PDA, Zhang et al. SIGIR 2021): training scores are
  f(u, i) + gamma_train * log(pop_i), so popularity's direct effect is explained by its own term and
  f learns the rest; serving applies do(popularity): f(u, i) + gamma * log(pop_i) with gamma chosen by
  the caller (0 = fully deconfounded).
- Adversarial fairness (eq. 16-17; Ganin & Lempitsky 2015 gradient reversal): an adversary predicts
  the sensitive attribute from the user vector, the user encoder receives the reversed gradient
  scaled by lambda_fair.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def propensities(
    item_pop: torch.Tensor, user_activity: torch.Tensor, eta_item: float, eta_user: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,), (U,) counts -> per-item and per-user propensity factors in (0, 1]."""
    p_item = (item_pop.clamp(min=1.0) / item_pop.max().clamp(min=1.0)) ** eta_item
    p_user = (user_activity.clamp(min=1.0) / user_activity.max().clamp(min=1.0)) ** eta_user
    return p_item, p_user


def ipw_weights(propensity: torch.Tensor, clip: float) -> torch.Tensor:
    """(P,) propensities -> clipped, self-normalised weights with mean 1."""
    w = (1.0 / propensity).clamp(max=clip)
    return w * (w.numel() / w.sum())


def log_popularity(item_pop: torch.Tensor) -> torch.Tensor:
    """The confounder as the score term uses it: log(1 + count), (N,)."""
    return torch.log1p(item_pop)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _GradientReversal.apply(x, scale)


class FairnessAdversary(nn.Module):
    """Predicts a sensitive attribute (num_groups classes) from user vectors."""

    def __init__(self, dim: int, num_groups: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_groups))

    def loss(self, user_vectors: torch.Tensor, groups: torch.Tensor, lambda_fair: float) -> torch.Tensor:
        """Cross-entropy of the adversary; gradients reaching user_vectors are reversed."""
        known = groups >= 0
        if not known.any():
            return user_vectors.sum() * 0.0
        logits = self.net(reverse_gradient(user_vectors[known], lambda_fair))
        return nn.functional.cross_entropy(logits, groups[known])


def group_loss_gap(losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Largest difference between groups' mean training losses in a batch (unknown group -1 ignored):
    a differentiable stand-in for the NDCG gap of eq. 18 (a performance-parity regulariser, as in Yao &
    Huang 2017). The adversary alone removes the attribute from the user vector, which need not equalise
    how well each group is served."""
    means = [losses[groups == g].mean() for g in groups.unique() if g >= 0]
    if len(means) < 2:
        return losses.sum() * 0.0
    stacked = torch.stack(means)
    return stacked.max() - stacked.min()
