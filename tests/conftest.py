"""Small datasets built in code, so tests run in seconds and state exactly what they contain."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import CategoricalField, Interactions, RecDataset, UserAttribute


def make_dataset(users: list[list[int]], num_items: int, genders: list[int] | None = None) -> RecDataset:
    """users[u] = u's items in time order; items get one genre each (item % 3)."""
    u = np.concatenate([np.full(len(s), i) for i, s in enumerate(users)]).astype(np.int64)
    it = np.concatenate([np.asarray(s) for s in users]).astype(np.int64)
    ts = np.concatenate([np.arange(len(s)) * 100 + i for i, s in enumerate(users)]).astype(np.int64)
    genres = CategoricalField(("a", "b", "c"), np.arange(num_items + 1, dtype=np.int64), np.arange(num_items) % 3)
    attrs = {}
    if genders is not None:
        attrs["gender"] = UserAttribute(("F", "M"), np.asarray(genders, dtype=np.int64))
    return RecDataset(
        "synthetic",
        tuple(f"u{i}" for i in range(len(users))),
        tuple(f"i{j}" for j in range(num_items)),
        Interactions(u, it, ts, None),
        {"title": tuple(f"item {j}" for j in range(num_items))},
        {"genres": genres},
        {},
        attrs,
        ("gender",) if genders is not None else (),
    )


@pytest.fixture
def clustered() -> RecDataset:
    """Two user communities, each consuming its own half of 40 items in a random order."""
    rng = np.random.default_rng(0)
    users = []
    for u in range(60):
        half = np.arange(20) + (20 if u % 2 else 0)
        users.append(rng.permutation(half)[:12].tolist())
    return make_dataset(users, 40, genders=[u % 2 for u in range(60)])


@pytest.fixture
def cyclic() -> RecDataset:
    """Every user walks the ring 0 -> 1 -> ... -> 29 -> 0 from a random start: the next item is
    fully determined by the last one, which only a sequential model can exploit."""
    rng = np.random.default_rng(1)
    users = []
    for _ in range(80):
        start = int(rng.integers(30))
        users.append([(start + t) % 30 for t in range(int(rng.integers(8, 16)))])
    return make_dataset(users, 30)
