"""BPR-MF (Rendle et al. 2009): matrix factorisation trained with the Bayesian personalised ranking
loss on (user, positive, uniformly sampled negative) triples."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.scoring import HistoryBatch, TrainData


@dataclass(frozen=True)
class BPRConfig:
    dim: int = 64
    lr: float = 1e-3
    l2: float = 1e-4  # on the embeddings of each batch, as in LightGCN's reference code
    batch_size: int = 2048


def bpr_batches(
    data: TrainData, batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled (users, positives, negatives) batches, one uniform negative per interaction.

    Negatives are not checked against the user's positives: with catalogues of thousands of items a
    collision is rare, and the check would dominate the epoch time.
    """
    order = rng.permutation(len(data.log))
    neg = rng.integers(0, data.num_items, size=len(order))
    users = torch.from_numpy(data.log.user[order])
    pos = torch.from_numpy(data.log.item[order])
    negs = torch.from_numpy(neg)
    for s in range(0, len(order), batch_size):
        yield users[s : s + batch_size], pos[s : s + batch_size], negs[s : s + batch_size]


def bpr_loss(u: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """u, i, j: (B, D) user, positive and negative vectors."""
    return -nn.functional.logsigmoid((u * i).sum(-1) - (u * j).sum(-1)).mean()


def l2_penalty(*vectors: torch.Tensor) -> torch.Tensor:
    return sum((v.pow(2).sum() for v in vectors), torch.zeros(())) / vectors[0].shape[0]


class BPRMF(nn.Module):
    name = "bprmf"

    def __init__(self, num_users: int, num_items: int, config: BPRConfig | None = None) -> None:
        super().__init__()
        self.config = config or BPRConfig()
        self.user_emb = nn.Embedding(num_users, self.config.dim)
        self.item_emb = nn.Embedding(num_items, self.config.dim)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr)

    def fit_epoch(self, data: TrainData, rng: np.random.Generator) -> float:
        self.train()
        losses = []
        for users, pos, neg in bpr_batches(data, self.config.batch_size, rng):
            u, i, j = self.user_emb(users), self.item_emb(pos), self.item_emb(neg)
            loss = bpr_loss(u, i, j) + self.config.l2 * l2_penalty(u, i, j)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def score(self, batch: HistoryBatch) -> torch.Tensor:
        return self.user_emb(batch.users) @ self.item_emb.weight.T
