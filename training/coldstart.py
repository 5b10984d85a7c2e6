"""Cold-start protocol: withhold a share of items from training entirely, then ask whether their
content-only vectors (no id embedding: the model never saw them) are retrievable for the users who
did interact with them.

Each such user's warm history is the model input; the targets are the withheld items they met; the
ranking is over the withheld items only, so the reference is a random ranking of that set.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from math import comb

import numpy as np
import torch

from models.data import RecDataset
from models.scoring import HistoryBatch, Scorer
from models.splits import EvalSet, user_boundaries


def withhold_items(data: RecDataset, frac: float, min_count: int, seed: int) -> tuple[RecDataset, np.ndarray]:
    """The dataset without the interactions of a random `frac` of items having >= min_count of them."""
    counts = np.bincount(data.interactions.item, minlength=data.num_items)
    candidates = np.flatnonzero(counts >= min_count)
    cold = np.sort(np.random.default_rng(seed).choice(candidates, int(frac * len(candidates)), replace=False))
    warm = data.interactions.take(~np.isin(data.interactions.item, cold))
    return replace(data, interactions=warm), cold


def cold_eval_set(data: RecDataset, cold: np.ndarray) -> EvalSet:
    """Users with both warm history and withheld items: history = warm items, targets = cold items."""
    inter = data.interactions
    users, hist, tgt = [], [], []
    for s, e in pairwise(user_boundaries(inter)):
        items = inter.item[s:e]
        is_cold = np.isin(items, cold)
        if is_cold.any() and (~is_cold).any():
            users.append(int(inter.user[s]))
            hist.append(items[~is_cold])
            tgt.append(np.unique(items[is_cold]))
    h_ptr = np.concatenate([[0], np.cumsum([len(h) for h in hist])]).astype(np.int64)
    t_ptr = np.concatenate([[0], np.cumsum([len(t) for t in tgt])]).astype(np.int64)
    return EvalSet(np.array(users, np.int64), h_ptr, np.concatenate(hist), t_ptr, np.concatenate(tgt))


class OnlyAmong:
    """Restricts a scorer's ranking to a set of items (the rest scores -inf)."""

    def __init__(self, inner: Scorer, items: np.ndarray, num_items: int) -> None:
        self.inner, self.name = inner, f"{inner.name}-cold"
        self.outside = torch.ones(num_items, dtype=torch.bool)
        self.outside[torch.from_numpy(items)] = False

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        return self.inner.score(batch).masked_fill(self.outside, -torch.inf)


def random_hit_rate(es: EvalSet, pool: int, k: int) -> float:
    """Expected HR@k of a uniformly random ranking of `pool` items: 1 - C(pool - t, k) / C(pool, k)."""
    if k >= pool:
        return 1.0
    t = np.diff(es.target_indptr)
    return float(np.mean([1.0 - comb(pool - n, k) / comb(pool, k) for n in t]))
