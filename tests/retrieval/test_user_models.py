"""The one encoding of a user (`UserVectors`): the cache policy service and learner share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from retrieval.user_models import GenerativeUserModel, UserVectors, appended
from tests.conftest import SmallTrained


class CountingModel:
    """A user model whose vector is the window's sum, counting the histories it encoded."""

    window = 4

    def __init__(self) -> None:
        self.encoded: list[tuple[int, ...]] = []

    def encode(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        self.encoded += [tuple(h) for h in histories]
        return torch.tensor([[float(sum(h))] for h in histories])


def test_appended_counts_items_added_to_a_sliding_window() -> None:
    assert appended((1, 2, 3), (1, 2, 3), window=4, fewer_than=1)
    assert not appended((1, 2, 3), (1, 2, 3, 4), window=4, fewer_than=1)
    assert appended((1, 2, 3), (1, 2, 3, 4), window=4, fewer_than=2)
    assert appended((1, 2, 3, 4), (3, 4, 5, 6), window=4, fewer_than=3)  # full window: the oldest slide out
    assert not appended((1, 2, 3, 4), (3, 4, 5, 6), window=4, fewer_than=2)
    assert not appended((1, 2, 3, 4), (1, 3, 4, 2), window=4, fewer_than=4)  # item 2 moved: not an append
    assert not appended((1, 2, 3, 4), (5, 6, 7, 8), window=4, fewer_than=10)  # a whole new window


def test_refresh_every_one_re_encodes_at_every_change_and_never_otherwise() -> None:
    model = CountingModel()
    users = UserVectors(model, refresh_every=1)  # type: ignore[arg-type]
    assert users(["u"], [[1, 2]]).tolist() == [[3.0]]
    assert users(["u"], [[1, 2]]).tolist() == [[3.0]]  # asked again, same history: cached
    assert users(["u"], [[1, 2, 5]]).tolist() == [[8.0]]
    assert users([""], [[1, 2, 5]]).tolist() == [[8.0]]  # no user id: encoded, not cached
    assert model.encoded == [(1, 2), (1, 2, 5), (1, 2, 5)]


def test_a_capped_history_still_refreshes() -> None:
    """A history at its store's cap keeps its length while items are appended (the oldest drop): the
    policy counts appended items, not the length, so a heavy user's vector does not freeze."""
    model = CountingModel()
    users = UserVectors(model, refresh_every=3)  # type: ignore[arg-type]
    history = list(range(10))
    for new in range(10, 16):
        users(["heavy"], [history])
        history = [*history[1:], new]  # capped at 10
    assert model.encoded == [(6, 7, 8, 9), (9, 10, 11, 12)]  # at the first ask, then 3 items later
    assert users(["heavy"], [[1, 2, 3]]).tolist() == [[6.0]]  # not an append of the cached window: re-encoded


def test_generative_windows_read_the_newest_items_as_the_model_does(small_trained: SmallTrained) -> None:
    model = small_trained.model
    users = UserVectors(GenerativeUserModel(model, "v"))
    histories = [small_trained.split.test.history_of(u) for u in range(5)]
    with torch.no_grad():
        single = [model.user_vectors(torch.from_numpy(h[-model.config.max_len :])[None])[0] for h in histories]
    np.testing.assert_allclose(users([str(u) for u in range(5)], histories).numpy(), torch.stack(single).numpy(),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
