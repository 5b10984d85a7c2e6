"""LightGCN (He et al. 2020): embeddings smoothed over the symmetric-normalised user-item graph,
layer outputs averaged, trained with BPR."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.baselines.bprmf import bpr_batches, bpr_loss, l2_penalty
from models.scoring import HistoryBatch, TrainData


@dataclass(frozen=True)
class LightGCNConfig:
    dim: int = 64
    layers: int = 3
    lr: float = 5e-3
    l2: float = 1e-4
    batch_size: int = 2048


def normalized_adjacency(data: TrainData) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph over U + N nodes, sparse (U+N, U+N)."""
    u = torch.from_numpy(data.log.user)
    i = torch.from_numpy(data.log.item) + data.num_users
    idx = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
    n = data.num_users + data.num_items
    edges = torch.sparse_coo_tensor(idx, torch.ones(idx.shape[1]), (n, n), check_invariants=True).coalesce()
    r, c = edges.indices()  # repeated interactions collapse to one edge
    d = torch.bincount(r, minlength=n).float().clamp(min=1.0).pow(-0.5)
    adj = torch.sparse_coo_tensor(edges.indices(), d[r] * d[c], (n, n), check_invariants=True).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we use only its matmul
        warnings.simplefilter("ignore", UserWarning)
        return adj.to_sparse_csr()


class _SymmetricSpMM(torch.autograd.Function):
    """x -> A @ x for a constant symmetric sparse A. torch's own backward for sparse @ dense was
    ~25x slower than the forward on CPU (measured); with A = A^T the gradient is one more A @ g."""

    @staticmethod
    def forward(ctx: Any, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.adj @ grad


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
            x = _SymmetricSpMM.apply(self.adj, x)
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

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        self._cache = None  # the propagated embeddings belong to the old weights
        return super().load_state_dict(state, strict=strict, assign=assign)

    @torch.no_grad()
    def score(self, batch: HistoryBatch) -> torch.Tensor:
        if self._cache is None or self.training:
            self.eval()
            self._cache = self.propagate()
        out = self._cache
        return out[batch.users] @ out[self.num_users :].T
