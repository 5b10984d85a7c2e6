"""In-memory recommendation dataset: interactions, item features and user attributes as arrays.

Everything here is indexed by dense internal ids (0..num_users-1, 0..num_items-1); the external ids
live in `user_ids` / `item_ids`. Readers in `recdata` build these objects; nothing here touches files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Columnar interaction log, sorted by (user, timestamp, original order)."""

    user: np.ndarray  # (E,) int64
    item: np.ndarray  # (E,) int64
    timestamp: np.ndarray  # (E,) int64, seconds since epoch
    rating: np.ndarray | None = None  # (E,) float32

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def take(self, mask_or_index: np.ndarray) -> Interactions:
        rating = None if self.rating is None else self.rating[mask_or_index]
        return Interactions(self.user[mask_or_index], self.item[mask_or_index], self.timestamp[mask_or_index], rating)


@dataclass(frozen=True)
class CategoricalField:
    """A (possibly multi-valued) categorical item column in CSR form."""

    vocab: tuple[str, ...]
    indptr: np.ndarray  # (N+1,) int64
    indices: np.ndarray  # (nnz,) int64 into vocab

    def values_of(self, item: int) -> list[str]:
        return [self.vocab[j] for j in self.indices[self.indptr[item] : self.indptr[item + 1]]]


@dataclass(frozen=True)
class UserAttribute:
    """A categorical user attribute (for example gender); code -1 means unknown."""

    vocab: tuple[str, ...]
    codes: np.ndarray  # (U,) int64


@dataclass(frozen=True)
class RecDataset:
    name: str
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    interactions: Interactions
    item_text: dict[str, tuple[str, ...]] = field(default_factory=dict)
    item_categorical: dict[str, CategoricalField] = field(default_factory=dict)
    item_numerical: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) float32, NaN = missing
    user_attributes: dict[str, UserAttribute] = field(default_factory=dict)
    sensitive: tuple[str, ...] = ()  # names in user_attributes used for fairness

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def fingerprint(self) -> str:
        """Content hash of ids and interactions: checkpoints refuse to load on another dataset."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.user_ids).encode())
        h.update("\x1e".join(self.item_ids).encode())
        for arr in (self.interactions.user, self.interactions.item, self.interactions.timestamp):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def titles(self) -> tuple[str, ...]:
        """Display names: the `title` text column, else the first text column, else the ids."""
        return self.item_text.get("title") or next(iter(self.item_text.values()), self.item_ids)

    def aspects(self, item: int) -> tuple[str, ...]:
        """All categorical values of an item (e.g. its genres), field by field."""
        return tuple(v for f in self.item_categorical.values() for v in f.values_of(item))

    def category_matrix(self) -> np.ndarray | None:
        """(N, C) float32 multi-hot over all categorical fields, or None without any."""
        if not self.item_categorical:
            return None
        blocks = []
        for f in self.item_categorical.values():
            block = np.zeros((self.num_items, len(f.vocab)), dtype=np.float32)
            rows = np.repeat(np.arange(self.num_items), np.diff(f.indptr))
            block[rows, f.indices] = 1.0
            blocks.append(block)
        return np.concatenate(blocks, axis=1)
