"""The narrow seam between recommenders and the evaluation / training loops.

Every recommender scores a batch of users given their time-ordered histories; trainable ones also
run one epoch over the training log. Loops in `training/` only see these two Protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from models.data import Interactions
from models.splits import user_boundaries

PAD = -1


@dataclass(frozen=True)
class HistoryBatch:
    users: torch.Tensor  # (B,) int64
    items: torch.Tensor  # (B, L) int64, left-padded with PAD; the newest item is last


def pad_histories(histories: list[np.ndarray], max_len: int) -> torch.Tensor:
    """(B, L) left-padded with PAD, keeping each history's newest `max_len` items."""
    length = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.full((len(histories), length), PAD, dtype=np.int64)
    for i, h in enumerate(histories):
        h = h[-length:]
        if len(h):
            out[i, length - len(h) :] = h
    return torch.from_numpy(out)


@dataclass(frozen=True)
class TrainData:
    """The training log plus what most models derive from it."""

    log: Interactions
    num_users: int
    num_items: int

    def sequences(self) -> dict[int, np.ndarray]:
        """User -> time-ordered training items."""
        b = user_boundaries(self.log)
        return {int(self.log.user[s]): self.log.item[s:e] for s, e in pairwise(b) if e > s}

    def popularity(self) -> np.ndarray:
        """(N,) float64 interaction counts per item."""
        return np.bincount(self.log.item, minlength=self.num_items).astype(np.float64)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        """(B, N) scores over the whole catalogue; higher is better."""
        ...


@runtime_checkable
class Trainable(Scorer, Protocol):
    def fit_epoch(self, data: TrainData, rng: np.random.Generator) -> float:
        """One pass over the training data; returns the mean loss."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> object: ...
