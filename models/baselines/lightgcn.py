"""LightGCN (He et al. 2020): embeddings smoothed over the symmetric-normalised user-item graph,
layer outputs averaged, trained with BPR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.baselines.bprmf import bpr_batches, bpr_loss, l2_penalty
from models.scoring import HistoryBatch, TrainData


@dataclass(frozen=True)
class LightGCNConfig:
    dim: int = 64
    layers: int = 3
    lr: float = 2e-3
    l2: float = 1e-4
    batch_size: int = 2048


def normalized_adjacency(data: TrainData) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph over U + N nodes, sparse (U+N, U+N)."""
    u = torch.from_numpy(data.log.user)
    i = torch.from_numpy(data.log.item) + data.num_users
    idx = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    n = data.num_users + data.num_items
    adj = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (n, n), check_invariants=True).coalesce()
    adj = torch.sparse_coo_tensor(adj.indices(), torch.ones_like(adj.values()), (n, n))  # repeats -> 1
    deg = torch.sparse.sum(adj, dim=1).to_dense().clamp(min=1.0)
    d = deg.pow(-0.5)
    r, c = adj.indices()
    return torch.sparse_coo_tensor(adj.indices(), d[r] * d[c], (n, n)).coalesce()


class LightGCN(nn.Module):
    name = "lightgcn"

    def __init__(self, data: TrainData, config: LightGCNConfig | None = None) -> None:
        super().__init__()
        self.config = config or LightGCNConfig()
        self.num_users = data.num_users
        self.emb = nn.Embedding(data.num_users + data.num_items, self.config.dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.adj = normalized_adjacency(data)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=self.config.lr)
        self._cache: torch.Tensor | None = None

    def propagate(self) -> torch.Tensor:
        """(U+N, D) mean of the layer-0..L embeddings."""
        x = self.emb.weight
        layers = [x]
        for _ in range(self.config.layers):
            x = self.adj @ x
            layers.append(x)
        return torch.stack(layers).mean(0)

    def fit_epoch(self, data: TrainData, rng: np.random.Generator) -> float:
        self.train()
        self._cache = None
        losses = []
        for users, pos, neg in bpr_batches(data, self.config.batch_size, rng):
            out = self.propagate()
            pos, neg = pos + self.num_users, neg + self.num_users
            loss = bpr_loss(out[users], out[pos], out[neg])
            loss = loss + self.config.l2 * l2_penalty(self.emb(users), self.emb(pos), self.emb(neg))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> object:
        self._cache = None  # the propagated embeddings belong to the old weights
        return super().load_state_dict(state, strict=strict, assign=assign)

    @torch.no_grad()
    def score(self, batch: HistoryBatch) -> torch.Tensor:
        if self._cache is None or self.training:
            self.eval()
            self._cache = self.propagate()
        out = self._cache
        return out[batch.users] @ out[self.num_users :].T
