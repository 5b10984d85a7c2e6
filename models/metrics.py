"""Ranking, beyond-accuracy and fairness metrics.

Accuracy metrics take, per user, the 0-based ranks of that user's target items in the ranked list
(ties counted pessimistically by the caller). Beyond-accuracy metrics take the top-K lists, (M, K)
item ids. Definitions follow RecBole's where one exists; the rest cite their source.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ranks = Sequence[np.ndarray]  # per user: (T_u,) 0-based ranks of the targets


def _discount(ranks: np.ndarray) -> np.ndarray:
    return 1.0 / np.log2(ranks + 2.0)


def hit_rate(ranks: Ranks, k: int) -> np.ndarray:
    """(M,) 1 if any target is in the top k."""
    return np.array([float((r < k).any()) for r in ranks])


def recall(ranks: Ranks, k: int) -> np.ndarray:
    """(M,) share of the user's targets in the top k."""
    return np.array([float((r < k).sum()) / len(r) for r in ranks])


def ndcg(ranks: Ranks, k: int) -> np.ndarray:
    """(M,) binary-relevance NDCG@k; the ideal list puts min(T_u, k) targets first."""
    out = np.empty(len(ranks))
    for i, r in enumerate(ranks):
        dcg = _discount(r[r < k]).sum()
        idcg = _discount(np.arange(min(len(r), k))).sum()
        out[i] = dcg / idcg
    return out


def mrr(ranks: Ranks) -> np.ndarray:
    """(M,) reciprocal rank of the first target (no cut-off)."""
    return np.array([1.0 / (r.min() + 1.0) for r in ranks])


def intra_list_diversity(lists: np.ndarray, features: np.ndarray) -> float:
    """Mean pairwise cosine distance between the items of each list (Ziegler et al. 2005).

    lists: (M, K) item ids; features: (N, C) item feature vectors (here category multi-hots).
    """
    f = features[lists]  # (M, K, C)
    norms = np.linalg.norm(f, axis=-1, keepdims=True)
    f = np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
    sim = f @ f.transpose(0, 2, 1)  # (M, K, K)
    k = lists.shape[1]
    off_diag = (sim.sum(axis=(1, 2)) - np.trace(sim, axis1=1, axis2=2)) / (k * (k - 1))
    return float(np.mean(1.0 - off_diag))


def coverage(lists: np.ndarray, num_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    return float(np.unique(lists).size / num_items)


def novelty(lists: np.ndarray, popularity: np.ndarray, num_users: int) -> float:
    """Mean self-information -log2(p_i) of recommended items, p_i the share of users who had i.

    Add-one smoothing keeps never-seen items finite (Zhou et al. 2010 use the same quantity).
    """
    p = (popularity[lists] + 1.0) / (num_users + 1.0)
    return float(np.mean(-np.log2(p)))


def average_popularity(lists: np.ndarray, popularity: np.ndarray) -> float:
    """ARP (Abdollahpouri et al. 2019): mean training interaction count of recommended items."""
    return float(np.mean(popularity[lists]))


def head_items(popularity: np.ndarray, head_frac: float = 0.2) -> np.ndarray:
    """(N,) bool: the `head_frac` most popular items; the rest is the long tail."""
    n_head = int(np.ceil(head_frac * popularity.size))
    head = np.zeros(popularity.size, dtype=bool)
    head[np.argsort(-popularity, kind="stable")[:n_head]] = True
    return head


def long_tail_share(lists: np.ndarray, popularity: np.ndarray, head_frac: float = 0.2) -> float:
    """Share of recommended slots given to long-tail items (outside the top `head_frac`)."""
    return float(np.mean(~head_items(popularity, head_frac)[lists]))


def group_gap(values: np.ndarray, groups: np.ndarray) -> float:
    """Largest difference between group means of a per-user metric; group -1 (unknown) is ignored."""
    means = [values[groups == g].mean() for g in np.unique(groups) if g >= 0]
    return float(max(means) - min(means)) if len(means) > 1 else 0.0


def group_gap_se(values: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of `group_gap` from user sampling: sqrt(var_a/n_a + var_b/n_b) for the best- and
    worst-served groups. A gap within about two of these is indistinguishable from no gap."""
    known = [values[groups == g] for g in np.unique(groups) if g >= 0]
    if len(known) < 2:
        return 0.0
    by_mean = sorted(known, key=np.mean)
    lo, hi = by_mean[0], by_mean[-1]
    return float(np.sqrt(lo.var(ddof=1) / len(lo) + hi.var(ddof=1) / len(hi)))


def exposure_gap(lists: np.ndarray, groups: np.ndarray, num_items: int) -> float:
    """Recommendation parity between user groups: the largest total-variation distance between
    groups' position-discounted item-exposure distributions (0 identical, 1 disjoint)."""
    weights = _discount(np.arange(lists.shape[1]))  # (K,)
    dists = []
    for g in np.unique(groups):
        if g < 0:
            continue
        rows = lists[groups == g]
        exposure = np.bincount(rows.ravel(), weights=np.tile(weights, len(rows)), minlength=num_items)
        dists.append(exposure / exposure.sum())
    gaps = [0.5 * np.abs(a - b).sum() for i, a in enumerate(dists) for b in dists[i + 1 :]]
    return float(max(gaps)) if gaps else 0.0
