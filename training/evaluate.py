"""Evaluation loop: scores every evaluated user, ranks the targets, aggregates `models.metrics`.

Protocols:
  full             rank the target against every item the user has not interacted with (default;
                   Krichene & Rendle 2020 show sampled metrics can reorder models)
  sampled-uniform  rank it against 99 items sampled uniformly from those the user has not seen
  sampled-pop      ... sampled in proportion to training popularity
Ties count against the model (a target ranks below every item with an equal score), so a model that
scores everything alike gets no credit. Negatives are drawn from a fixed seed: every model faces the
same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models import metrics
from models.data import RecDataset
from models.scoring import HistoryBatch, Scorer, TrainData, pad_histories
from models.splits import EvalSet

PROTOCOLS = ("full", "sampled-uniform", "sampled-pop")
NUM_NEGATIVES = 99


@dataclass(frozen=True)
class EvalContext:
    """What beyond-accuracy and fairness metrics need besides the ranked lists."""

    popularity: np.ndarray  # (N,) training interaction counts
    num_users: int
    features: np.ndarray | None = None  # (N, C) item features for intra-list diversity
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # sensitive attribute -> (U,) codes

    @classmethod
    def build(cls, data: RecDataset, train: TrainData) -> EvalContext:
        groups = {name: data.user_attributes[name].codes for name in data.sensitive}
        return cls(train.popularity(), data.num_users, data.category_matrix(), groups)


@dataclass
class _Collected:
    ranks: list[np.ndarray] = field(default_factory=list)
    top: list[np.ndarray] = field(default_factory=list)


def evaluate(
    scorer: Scorer,
    eval_set: EvalSet,
    ctx: EvalContext,
    protocol: str = "full",
    ks: tuple[int, ...] = (5, 10, 20),
    batch_size: int = 256,
    seed: int = 0,
    beyond: bool = True,
    progress: bool = False,
) -> dict[str, float]:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    num_items = ctx.popularity.shape[0]
    negatives = None if protocol == "full" else sample_negatives(eval_set, ctx.popularity, protocol, seed)
    got = _Collected()
    starts = range(0, len(eval_set), batch_size)
    for start in tqdm(starts, desc=f"eval {scorer.name}", leave=False, disable=not progress):
        rows = np.arange(start, min(start + batch_size, len(eval_set)))
        batch = HistoryBatch(
            torch.from_numpy(eval_set.users[rows]),
            pad_histories([eval_set.history_of(r) for r in rows], max_len=1 << 30),
        )
        with torch.no_grad():
            scores = scorer.score(batch).to(torch.float32, copy=True)  # (B, N), masked in place below
        if negatives is None:
            _rank_full(scores, eval_set, rows, got, top_n=min(100, num_items))
        else:
            _rank_sampled(scores, eval_set, rows, negatives[rows], got)
    return _aggregate(got, eval_set, ctx, ks, beyond and negatives is None)


def _rank_full(scores: torch.Tensor, es: EvalSet, rows: np.ndarray, got: _Collected, top_n: int) -> None:
    hist_r = np.concatenate([np.full(len(es.history_of(r)), i) for i, r in enumerate(rows)])
    hist_c = np.concatenate([es.history_of(r) for r in rows])
    tgt_r = np.concatenate([np.full(len(es.targets_of(r)), i) for i, r in enumerate(rows)])
    tgt_c = np.concatenate([es.targets_of(r) for r in rows])
    target_scores = scores[tgt_r, tgt_c]  # (P,)
    scores[hist_r, hist_c] = -torch.inf  # already-seen items are not recommendable ...
    scores[tgt_r, tgt_c] = target_scores  # ... unless they are the target (re-consumption)
    ranks = (scores[tgt_r] >= target_scores[:, None]).sum(1) - 1  # pessimistic ties
    _collect_ranks(ranks.numpy(), tgt_r, len(rows), got)
    got.top.append(scores.topk(top_n, dim=1).indices.numpy())


def _rank_sampled(scores: torch.Tensor, es: EvalSet, rows: np.ndarray, negs: np.ndarray, got: _Collected) -> None:
    tgt_r = np.concatenate([np.full(len(es.targets_of(r)), i) for i, r in enumerate(rows)])
    tgt_c = np.concatenate([es.targets_of(r) for r in rows])
    neg_scores = scores.gather(1, torch.from_numpy(negs))  # (B, 99)
    ranks = (neg_scores[tgt_r] >= scores[tgt_r, tgt_c][:, None]).sum(1)
    _collect_ranks(ranks.numpy(), tgt_r, len(rows), got)


def _collect_ranks(ranks: np.ndarray, row_of: np.ndarray, n_rows: int, got: _Collected) -> None:
    bounds = np.searchsorted(row_of, np.arange(n_rows + 1))
    got.ranks.extend(ranks[bounds[i] : bounds[i + 1]] for i in range(n_rows))


def sample_negatives(es: EvalSet, popularity: np.ndarray, protocol: str, seed: int) -> np.ndarray:
    """(M, k) distinct items each user never interacted with, drawn uniformly or in proportion to
    training popularity; k = 99, or fewer when a tiny catalogue leaves some user fewer candidates."""
    rng = np.random.default_rng(seed)
    weights = np.ones_like(popularity) if protocol == "sampled-uniform" else popularity.astype(np.float64)
    drawable = np.flatnonzero(weights > 0)
    allowed = [np.setdiff1d(drawable, np.union1d(es.history_of(r), es.targets_of(r))) for r in range(len(es))]
    k = min([NUM_NEGATIVES, *(len(a) for a in allowed)])
    out = np.empty((len(es), k), dtype=np.int64)
    for r, items in enumerate(allowed):
        p = weights[items] / weights[items].sum()
        out[r] = rng.choice(items, size=k, replace=False, p=p)
    return out


def _aggregate(got: _Collected, es: EvalSet, ctx: EvalContext, ks: tuple[int, ...], beyond: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    user_ndcg = metrics.ndcg(got.ranks, 10)  # per user: the SE below and the group gaps
    for k in ks:
        out[f"HR@{k}"] = float(metrics.hit_rate(got.ranks, k).mean())
        out[f"NDCG@{k}"] = float((user_ndcg if k == 10 else metrics.ndcg(got.ranks, k)).mean())
        out[f"Recall@{k}"] = float(metrics.recall(got.ranks, k).mean())
    if 10 in ks:  # the user-sampling standard error: how far apart two models' NDCG@10 must be to mean much
        n = len(user_ndcg)
        out["NDCGSE@10"] = float(user_ndcg.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    out["MRR"] = float(metrics.mrr(got.ranks).mean())
    if not beyond:
        return out
    top = np.concatenate(got.top)  # (M, 100)
    top10 = top[:, :10]
    if ctx.features is not None:
        out["ILD@10"] = metrics.intra_list_diversity(top10, ctx.features)
    out["Coverage@100"] = metrics.coverage(top, ctx.popularity.shape[0])
    out["Novelty@10"] = metrics.novelty(top10, ctx.popularity, ctx.num_users)
    out["ARP@10"] = metrics.average_popularity(top10, ctx.popularity)
    out["LongTail@10"] = metrics.long_tail_share(top10, ctx.popularity)
    for name, codes in ctx.groups.items():
        g = codes[es.users]
        out[f"NDCGGap@10[{name}]"] = metrics.group_gap(user_ndcg, g)
        out[f"NDCGGapSE@10[{name}]"] = metrics.group_gap_se(user_ndcg, g)
        out[f"ExposureGap@10[{name}]"] = metrics.exposure_gap(top10, g, ctx.popularity.shape[0])
    return out
