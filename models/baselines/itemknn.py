"""ItemKNN (Sarwar et al. 2001): cosine item-item similarity over binary user-item vectors,
sparsified to each item's `k` nearest neighbours; a user's score for j sums sim(i, j) over history i.

The similarity is computed in dense row chunks: fine for catalogues up to a few 10k items.
"""

from __future__ import annotations

import torch

from models.scoring import PAD, HistoryBatch, TrainData


class ItemKNN:
    name = "itemknn"

    def __init__(self, data: TrainData, k: int = 100, shrink: float = 10.0, chunk: int = 2048) -> None:
        n = data.num_items
        x = torch.zeros(data.num_users, n)
        x[torch.from_numpy(data.log.user), torch.from_numpy(data.log.item)] = 1.0  # (U, N)
        norms = x.sum(0).sqrt()  # (N,)
        rows, cols, vals = [], [], []
        k = min(k, n - 1)
        for start in range(0, n, chunk):
            block = x[:, start : start + chunk].T @ x  # (c, N) co-occurrence counts
            # shrink damps similarities resting on a handful of co-occurrences
            sim = block / (norms[start : start + chunk, None] * norms[None, :] + shrink)
            idx = torch.arange(start, start + block.shape[0])
            sim[idx - start, idx] = 0.0
            top = sim.topk(k, dim=1)
            rows.append(idx.repeat_interleave(k))
            cols.append(top.indices.reshape(-1))
            vals.append(top.values.reshape(-1))
        # stored transposed so that scores = S^T @ history^T is one sparse matmul
        self.sim_t = torch.sparse_coo_tensor(
            torch.stack([torch.cat(cols), torch.cat(rows)]), torch.cat(vals), (n, n), check_invariants=True
        ).coalesce()
        self.num_items = n

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        h = torch.zeros(batch.items.shape[0], self.num_items + 1)
        h.scatter_(1, batch.items.where(batch.items != PAD, self.num_items), 1.0)
        return (self.sim_t @ h[:, : self.num_items].T).T  # (B, N)
