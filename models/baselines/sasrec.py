"""SASRec (Kang & McAuley 2018) trained with full cross-entropy over the catalogue instead of one
sampled negative: the variant Klenitskiy & Vasilev (RecSys 2023) showed to beat BERT4Rec.

Causal self-attention over the item sequence; the output at each position is scored against the
(tied) item embedding table to predict the next item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.scoring import PAD, HistoryBatch, TrainData
from models.sequences import training_windows, window_batches
from models.transformer import CausalTransformer, xavier_init


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 64
    newest_only: bool = False  # True: train on each user's newest max_len + 1 items only (the reference's rule)
    xavier: bool = True  # off: PyTorch's default layer init with N(0, 0.02) embeddings
    layout: str = "sasrec"  # the original block (models.transformer.SASRecBlock), or "pre-norm"
    length_buckets: bool = False  # batches of windows of similar length (models.sequences.window_batches)


class SASRec(nn.Module):
    name = "sasrec"

    def __init__(self, num_items: int, config: SASRecConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SASRecConfig()
        self.num_items = num_items
        self.item_emb = nn.Embedding(num_items + 1, c.dim, padding_idx=0)  # row 0 = padding
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = CausalTransformer(c.dim, c.layers, c.heads, c.dropout, c.layout)
        if c.xavier:
            xavier_init(self)
        else:
            nn.init.normal_(self.item_emb.weight, std=0.02)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=c.lr)

    def encode(self, items: torch.Tensor, last: bool = False) -> torch.Tensor:
        """items: (B, L) left-padded with PAD -> (B, L, D) hidden states, or with `last` (B, 1, D)."""
        ids = items + 1  # PAD (-1) -> 0
        L = ids.shape[1]
        # positions count back from the newest item, so batches padded to different lengths agree
        x = self.item_emb(ids) * self.config.dim**0.5 + self.pos_emb(torch.arange(L - 1, -1, -1))
        valid = ids != 0
        return self.encoder(self.dropout(x) * valid.unsqueeze(-1), valid, last=last)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight[1:].T  # (..., N)

    def fit_epoch(self, data: TrainData, rng: np.random.Generator) -> float:
        self.train()
        windows = training_windows(data.sequences(), self.config.max_len, self.config.newest_only)
        losses = []
        for _, inp, tgt in window_batches(windows, self.config.batch_size, rng, self.config.length_buckets):
            h = self.encode(inp)
            mask = tgt != PAD
            loss = nn.functional.cross_entropy(self.logits(h[mask]), tgt[mask])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses))

    @torch.no_grad()
    def score(self, batch: HistoryBatch) -> torch.Tensor:
        self.eval()
        items = batch.items[:, -self.config.max_len :]
        return self.logits(self.encode(items, last=True)[:, -1])
