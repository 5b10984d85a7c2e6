"""RAG context store: entries from the data, eq. 10 scoring, item restriction, real MiniLM embeddings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.data import Interactions
from retrieval.context import (
    CONTEXT,
    SECONDS_PER_DAY,
    ContextEntry,
    ContextStore,
    ContextWeights,
    build_context_index,
    build_entries,
)
from retrieval.edge import EdgeEngine
from tests.conftest import SmallTrained
from training.text_embeddings import embed_texts


def test_entries_come_from_the_data(small_trained: SmallTrained) -> None:
    data = small_trained.data
    entries = build_entries(data, similar_per_item=2)
    kinds = [e.kind for e in entries]
    assert kinds.count("description") == 40
    assert kinds.count("similar") == 80
    desc = entries[3]
    assert desc.text == "The alien story part 0 (1983). Genres: Sci-Fi, Action."
    assert desc.support == int(np.sum(data.interactions.item == 3))
    space_pairs = [e for e in entries if e.kind == "similar" and e.item < 20]
    assert all("also watched The" in e.text for e in space_pairs)
    assert all(e.genres == ("Sci-Fi", "Action") for e in space_pairs)  # space fans only co-watch space films


def test_yearly_rating_entries_need_min_raters(small_trained: SmallTrained) -> None:
    data = small_trained.data
    inter = data.interactions
    rated = replace(data, interactions=Interactions(inter.user, inter.item, inter.timestamp,
                                                    np.full(len(inter), 4.0, np.float32)))  # fmt: skip
    ratings = [e for e in build_entries(rated) if e.kind == "ratings"]
    assert ratings
    assert all(e.support >= 3 for e in ratings)
    assert "users rated" in ratings[0].text
    assert "4.0 out of 5" in ratings[0].text


@pytest.fixture
def store(small_trained: SmallTrained, tmp_path: Path) -> ContextStore:
    cache = small_trained.cache

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(texts, cache, progress=False)

    now = 1_700_000_000
    entries = [
        ContextEntry(0, "note", "A film about robots in space", now, 100, ("Sci-Fi",)),
        ContextEntry(0, "note", "A film about robots in space.", now - 3 * 365 * SECONDS_PER_DAY, 100, ("Sci-Fi",)),
        ContextEntry(1, "note", "A film about robots in space!", now, 1, ("Sci-Fi",)),
        ContextEntry(2, "note", "A wedding in Paris", now, 100, ("Romance",)),
    ]
    index = build_context_index(EdgeEngine(tmp_path), entries, embed, CONTEXT, progress=False)
    return ContextStore(index, embed, ContextWeights(l1=1.0, l2=0.5, l3=0.5, sigma_days=365.0))


def test_eq10_scores_similarity_recency_and_credibility(store: ContextStore) -> None:
    got = store.retrieve("robots in space", k=4, t_now=1_700_000_000)
    assert got[-1].item == 2  # the romance is least similar
    assert got[0].item == 0
    assert got[0].recency == pytest.approx(1.0)  # recent and credible beats both the stale twin and the anecdote
    stale = next(c for c in got if c.item == 0 and c is not got[0])
    anecdote = next(c for c in got if c.item == 1)
    assert stale.recency == pytest.approx(np.exp(-9 / 2), rel=1e-3)  # 3 sigma old
    assert anecdote.credibility == pytest.approx(np.log(2) / np.log(101))
    for c in got:
        assert c.score == pytest.approx(c.similarity + 0.5 * c.recency + 0.5 * c.credibility, rel=1e-5)


def test_restricted_to_items(store: ContextStore) -> None:
    got = store.retrieve("robots in space", k=10, items=[2], t_now=1_700_000_000)
    assert [c.item for c in got] == [2]
