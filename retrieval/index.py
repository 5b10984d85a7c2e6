"""The vector-index seam: what every Qdrant engine offers the service.

Scores are dot products. Item points carry the fused item vector plus one extra coordinate,
log(1 + popularity), and a query carries the user vector plus gamma: the index then ranks by
`u . v + gamma * log(1 + pop)`, the popularity intervention of paper eq. 15, with gamma chosen per
request and no re-indexing (see `retrieval.catalog`).

Rebuilds never serve a half-built collection: `IndexEngine.create` makes a new, unpublished version,
and `publish` points the name at it in one step (a Qdrant alias, or an atomically replaced pointer
file for the embedded engine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Payload = dict[str, Any]


@dataclass(frozen=True)
class Filters:
    """Optional restrictions on a query; all given ones must hold."""

    categories: tuple[str, ...] = ()  # any of these in the payload's `categories`
    year_min: float | None = None
    year_max: float | None = None
    exclude_ids: frozenset[int] = frozenset()
    item_ids: tuple[int, ...] = ()  # restrict to these ids (payload `item` for context entries)

    @property
    def on_payload(self) -> bool:
        return bool(self.categories or self.year_min is not None or self.year_max is not None or self.item_ids)

    def matches(self, point_id: int, payload: Mapping[str, Any]) -> bool:
        """The same predicate the engines evaluate, for in-process filtering of over-fetched hits."""
        if point_id in self.exclude_ids:
            return False
        if self.categories and not set(self.categories) & set(payload.get("categories", ())):
            return False
        year = payload.get("year")
        if self.year_min is not None and (year is None or year < self.year_min):
            return False
        if self.year_max is not None and (year is None or year > self.year_max):
            return False
        return not self.item_ids or payload.get("item") in self.item_ids


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    payload: Payload


class VectorIndex(Protocol):
    """One published (or being-built) collection of points with dot-product search."""

    @property
    def dim(self) -> int: ...

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, payloads: Sequence[Payload]) -> None:
        """vectors: (B, dim) float32; replaces points with the same ids."""
        ...

    def search(self, query: np.ndarray, k: int, filters: Filters | None = None, with_payload: bool = True) -> list[Hit]:
        """query: (dim,) -> up to k hits, best first. Without payload the hits' payloads may be empty
        (a caller holding its own copy of the payloads saves their conversion on every query)."""
        ...

    def retrieve(self, ids: Sequence[int]) -> dict[int, Payload]:
        """Payloads of the ids that exist."""
        ...

    def count(self) -> int: ...


class IndexEngine(Protocol):
    """Creates versioned collections and publishes one of them under a stable name."""

    def create(self, name: str, dim: int, indexed_fields: Mapping[str, str]) -> VectorIndex:
        """A new empty version of `name`, invisible to `open` until published. indexed_fields maps a
        payload field to "keyword" or "float"."""
        ...

    def publish(self, name: str, index: VectorIndex) -> None:
        """Make `index` what `open(name)` returns, atomically; older versions are dropped."""
        ...

    def open(self, name: str) -> VectorIndex | None:
        """The published version of `name`, or None if nothing was ever published."""
        ...

    def drop(self, name: str) -> None:
        """Delete every version of `name` (a replaced model's collection); nothing if there is none."""
        ...

    def close(self) -> None:
        """Release files and connections (an embedded index locks its folder while open)."""
        ...


def check_vectors(vectors: np.ndarray, dim: int, n: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.shape != (n, dim):
        raise ValueError(f"expected vectors of shape ({n}, {dim}), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or inf")
    return vectors
