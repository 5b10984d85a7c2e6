"""One contract suite for every VectorIndex engine: Qdrant Edge (embedded default) and qdrant-client
(local mode, the same calls as against a server; both with native and in-process filtering)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retrieval.edge import EdgeEngine
from retrieval.index import Filters, IndexEngine
from retrieval.qdrant import QdrantEngine

N, DIM = 300, 16
FIELDS = {"categories": "keyword", "year": "float", "item": "integer"}


@pytest.fixture(params=["edge", "qdrant-local", "qdrant-local-native-filters"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IndexEngine]:
    if request.param == "edge":
        yield EdgeEngine(tmp_path / "edge")
        return
    eng = QdrantEngine(":memory:")
    eng.native_filters = request.param.endswith("native-filters")
    yield eng


def catalogue(seed: int = 0) -> tuple[np.ndarray, list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    payloads = [{"categories": ["drama", "comedy", "horror"][i % 3 : i % 3 + 1 + i % 2], "year": 1950.0 + i % 70,
                 "item": i % 50, "title": f"item {i}"} for i in range(N)]  # fmt: skip
    return vectors, payloads


def built(engine: IndexEngine, seed: int = 0) -> tuple[np.ndarray, list[dict[str, object]]]:
    vectors, payloads = catalogue(seed)
    index = engine.create("items", DIM, FIELDS)
    for lo in range(0, N, 128):
        hi = min(N, lo + 128)
        index.upsert(list(range(lo, hi)), vectors[lo:hi], payloads[lo:hi])
    engine.publish("items", index)
    return vectors, payloads


def exact_top(vectors: np.ndarray, q: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[int]:
    scores = vectors @ q
    if keep is not None:
        scores = np.where(keep, scores, -np.inf)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[i])]


def test_unpublished_name_opens_to_none(engine: IndexEngine) -> None:
    assert engine.open("items") is None
    engine.create("items", DIM, FIELDS)  # created but not published: still invisible
    assert engine.open("items") is None


def test_drop_deletes_one_name_and_leaves_the_others(engine: IndexEngine) -> None:
    built(engine)
    other = engine.create("other", DIM, FIELDS)
    other.upsert([0], catalogue()[0][:1], catalogue()[1][:1])
    engine.publish("other", other)
    engine.drop("items")
    engine.drop("never-published")  # nothing to drop: no error
    assert engine.open("items") is None
    kept = engine.open("other")
    assert kept is not None
    assert kept.count() == 1


def test_search_equals_exact_dot_product_top10(engine: IndexEngine) -> None:
    vectors, _ = built(engine)
    index = engine.open("items")
    assert index is not None
    assert index.count() == N
    assert index.dim == DIM
    for q in np.random.default_rng(1).normal(size=(20, DIM)).astype(np.float32):
        hits = index.search(q, 10)
        assert [h.id for h in hits] == exact_top(vectors, q, 10)
        np.testing.assert_allclose([h.score for h in hits], np.sort(vectors @ q)[::-1][:10], rtol=1e-4)


def test_exclusions_and_payload_filters_match_exact_search(engine: IndexEngine) -> None:
    vectors, payloads = built(engine)
    index = engine.open("items")
    assert index is not None
    q = np.random.default_rng(2).normal(size=DIM).astype(np.float32)
    excluded = frozenset(exact_top(vectors, q, 15)[::2])
    f = Filters(categories=("comedy",), year_min=1970.0, year_max=1999.0, exclude_ids=excluded)
    keep = np.array([f.matches(i, p) for i, p in enumerate(payloads)])
    hits = index.search(q, 10, f)
    assert [h.id for h in hits] == exact_top(vectors, q, 10, keep)
    assert all("comedy" in h.payload["categories"] and 1970 <= h.payload["year"] <= 1999 for h in hits)  # type: ignore[operator]
    by_item = index.search(q, 5, Filters(item_ids=(3, 7)))
    assert by_item
    assert {h.payload["item"] for h in by_item} <= {3, 7}


def test_filter_that_matches_little_returns_what_there_is(engine: IndexEngine) -> None:
    vectors, payloads = built(engine)
    index = engine.open("items")
    assert index is not None
    f = Filters(year_min=2019.0)  # year 2019 only: N / 70 items
    expected = [i for i, p in enumerate(payloads) if p["year"] == 2019.0]
    hits = index.search(vectors[0], 10, f)
    assert sorted(h.id for h in hits) == expected


def test_upsert_replaces_and_adds_without_republishing(engine: IndexEngine) -> None:
    built(engine)
    index = engine.open("items")
    assert index is not None
    new = np.zeros((2, DIM), np.float32)
    new[:, 0] = 100.0  # dominates any query with a positive first coordinate
    index.upsert([5, N], new, [{"title": "replaced", "year": 2000.0}, {"title": "new", "year": 2001.0}])
    q = np.zeros(DIM, np.float32)
    q[0] = 1.0
    assert {h.id for h in index.search(q, 2)} == {5, N}
    assert index.count() == N + 1
    assert index.retrieve([5, N, 10_000]) == {
        5: {"title": "replaced", "year": 2000.0},
        N: {"title": "new", "year": 2001.0},
    }


def test_rebuild_swaps_atomically_and_drops_old_versions(engine: IndexEngine) -> None:
    old_vectors, _ = built(engine, seed=0)
    before = engine.open("items")
    assert before is not None
    new = engine.create("items", DIM, FIELDS)
    vectors, payloads = catalogue(seed=3)
    new.upsert(list(range(10)), vectors[:10], payloads[:10])
    q = old_vectors[0]
    current = engine.open("items")
    assert current is not None
    assert current.count() == N
    engine.publish("items", new)
    current = engine.open("items")
    assert current is not None
    assert current.count() == 10
    assert [h.id for h in current.search(q, 3)] == exact_top(vectors[:10], q, 3)


def test_rejects_wrong_shapes_and_non_finite_vectors(engine: IndexEngine) -> None:
    index = engine.create("items", DIM, FIELDS)
    with pytest.raises(ValueError, match="shape"):
        index.upsert([0], np.zeros((1, DIM + 1), np.float32), [{}])
    with pytest.raises(ValueError, match="NaN"):
        index.upsert([0], np.full((1, DIM), np.nan, np.float32), [{}])
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros(DIM - 1, np.float32), 5)


def test_make_engine_picks_the_engine_by_location(tmp_path: Path) -> None:
    from retrieval.engines import make_engine

    assert isinstance(make_engine(str(tmp_path / "edge")), EdgeEngine)
    local = make_engine(f"qdrant-local:{tmp_path / 'local'}")
    assert isinstance(local, QdrantEngine)
    assert not local.native_filters  # local mode filters in process
    built(local)
    local.client.close()
    reopened = QdrantEngine(str(tmp_path / "local"))  # persisted on disk like a server's storage
    index = reopened.open("items")
    assert index is not None
    assert index.count() == N
    reopened.client.close()
