"""Train/validation/test splits for sequential recommendation.

- Leave-one-out by time (Kang & McAuley 2018, SASRec): per user the last interaction is the test
  target, the second-to-last the validation target, the rest is training.
- Global temporal split: one cut-off time for everybody, so no test interaction precedes a training
  one (the protocol argued for by Sun 2023, "Take a fresh look at recommender systems from an
  evaluation standpoint"). Targets are the items each user meets after the cut-off for the first time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np

from models.data import Interactions, RecDataset


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, each with a time-ordered history (model input and mask) and targets."""

    users: np.ndarray  # (M,) int64
    history_indptr: np.ndarray  # (M+1,) int64
    history: np.ndarray  # (H,) int64, time-ordered per user
    target_indptr: np.ndarray  # (M+1,) int64
    targets: np.ndarray  # (T,) int64

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def history_of(self, row: int) -> np.ndarray:
        return self.history[self.history_indptr[row] : self.history_indptr[row + 1]]

    def targets_of(self, row: int) -> np.ndarray:
        return self.targets[self.target_indptr[row] : self.target_indptr[row + 1]]


@dataclass(frozen=True)
class Split:
    train: Interactions
    valid: EvalSet
    test: EvalSet
    num_users: int
    num_items: int
    kind: str


def implicit(data: RecDataset, min_rating: float | None) -> RecDataset:
    """Keep only interactions rated at least `min_rating` (positive feedback); None keeps all."""
    inter = data.interactions
    if min_rating is None or inter.rating is None:
        return data
    return replace(data, interactions=inter.take(inter.rating >= min_rating))


def _csr(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(groups) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(g) for g in groups])
    flat = np.concatenate(groups).astype(np.int64) if groups else np.zeros(0, dtype=np.int64)
    return indptr, flat


def _eval_set(users: list[int], histories: list[np.ndarray], targets: list[np.ndarray]) -> EvalSet:
    h_ptr, h = _csr(histories)
    t_ptr, t = _csr(targets)
    return EvalSet(np.asarray(users, dtype=np.int64), h_ptr, h, t_ptr, t)


def user_boundaries(inter: Interactions) -> np.ndarray:
    """Start offsets of each user's run in a user-sorted log, plus the end: (runs+1,)."""
    change = np.flatnonzero(np.diff(inter.user)) + 1
    return np.concatenate([[0], change, [len(inter)]]).astype(np.int64)


def leave_one_out(data: RecDataset) -> Split:
    """Users with fewer than 3 interactions only contribute training data."""
    inter = data.interactions
    bounds = user_boundaries(inter)
    train_mask = np.ones(len(inter), dtype=bool)
    v_users: list[int] = []
    v_hist: list[np.ndarray] = []
    v_tgt: list[np.ndarray] = []
    t_hist: list[np.ndarray] = []
    t_tgt: list[np.ndarray] = []
    for start, end in pairwise(bounds):
        if end - start < 3:
            continue
        items = inter.item[start:end]
        train_mask[end - 2 : end] = False
        v_users.append(int(inter.user[start]))
        v_hist.append(items[:-2])
        v_tgt.append(items[-2:-1])
        t_hist.append(items[:-1])
        t_tgt.append(items[-1:])
    return Split(
        inter.take(train_mask), _eval_set(v_users, v_hist, v_tgt), _eval_set(v_users, t_hist, t_tgt),
        data.num_users, data.num_items, "leave-one-out",
    )  # fmt: skip


def temporal(data: RecDataset, valid_frac: float = 0.1, test_frac: float = 0.1) -> Split:
    """Global time cut-offs at the (1 - valid - test) and (1 - test) quantiles of timestamps."""
    inter = data.interactions
    t_valid, t_test = np.quantile(inter.timestamp, [1 - valid_frac - test_frac, 1 - test_frac])
    train = inter.take(inter.timestamp < t_valid)
    valid = _period_eval_set(
        inter, inter.timestamp < t_valid, (inter.timestamp >= t_valid) & (inter.timestamp < t_test)
    )
    test = _period_eval_set(inter, inter.timestamp < t_test, inter.timestamp >= t_test)
    return Split(train, valid, test, data.num_users, data.num_items, "temporal")


def _period_eval_set(inter: Interactions, before: np.ndarray, period: np.ndarray) -> EvalSet:
    bounds = user_boundaries(inter)
    users: list[int] = []
    hists: list[np.ndarray] = []
    tgts: list[np.ndarray] = []
    for start, end in pairwise(bounds):
        sl = slice(start, end)
        hist = inter.item[sl][before[sl]]
        new = np.setdiff1d(inter.item[sl][period[sl]], hist)  # re-consumption is not a prediction
        if len(hist) == 0 or len(new) == 0:
            continue
        users.append(int(inter.user[start]))
        hists.append(hist)
        tgts.append(new)
    return _eval_set(users, hists, tgts)
