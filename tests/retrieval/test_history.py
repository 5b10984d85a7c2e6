"""History store contract, against the real Redis at 127.0.0.1:6379 and the in-process store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from common import local_state
from retrieval.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore, SqliteHistoryStore
from tests.redis_keys import delete_prefixed

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["redis", "memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    if request.param == "memory":
        yield MemoryHistoryStore(max_len=5)
        return
    if request.param == "sqlite":
        yield SqliteHistoryStore(local_state.connect(tmp_path), max_len=5)
        return
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"test:history:{uuid.uuid4().hex}:"
    yield RedisHistoryStore(redis, prefix=prefix, max_len=5)
    await delete_prefixed(redis, prefix)
    await redis.aclose()


async def test_append_then_recent_in_time_order(store: HistoryStore) -> None:
    await store.append("u1", [("a", 10), ("c", 30)])
    await store.append("u1", [("b", 20)])  # arrives late, lands in time order
    assert await store.recent("u1", 10) == [("a", 10), ("b", 20), ("c", 30)]
    assert await store.recent("u1", 2) == [("b", 20), ("c", 30)]
    assert await store.recent("nobody", 10) == []
    assert await store.recent("u1", 0) == []


async def test_reinteraction_moves_forward_and_late_duplicate_changes_nothing(store: HistoryStore) -> None:
    await store.append("u", [("a", 10), ("b", 20)])
    await store.append("u", [("a", 30)])
    await store.append("u", [("b", 5), ("a", 1)])  # a replayed old event
    assert await store.recent("u", 10) == [("b", 20), ("a", 30)]


async def test_capped_at_newest_max_len(store: HistoryStore) -> None:
    await store.append("u", [(f"i{t}", t) for t in range(12)])
    assert await store.recent("u", 100) == [(f"i{t}", t) for t in range(7, 12)]


async def test_seed_loads_only_users_without_history(store: HistoryStore) -> None:
    await store.append("old", [("x", 99)])
    loaded = await store.seed({"old": [("a", 1)], "new": [("a", 1), ("b", 2)]})
    assert loaded == 1
    assert await store.recent("old", 10) == [("x", 99)]
    assert await store.recent("new", 10) == [("a", 1), ("b", 2)]


async def test_a_rejection_leaves_the_history_until_a_later_positive(store: HistoryStore) -> None:
    await store.append("u1", [("a", 10), ("b", 20), ("c", 30)])
    await store.reject("u1", [("b", 40), ("z", 41)])
    assert await store.recent("u1", 10) == [("a", 10), ("c", 30)]
    assert await store.rejected("u1") == {"b", "z"}
    assert await store.rejected("u2") == set()
    await store.append("u1", [("z", 50)])  # liked after all
    assert await store.rejected("u1") == {"b"}
    assert await store.recent("u1", 10) == [("a", 10), ("c", 30), ("z", 50)]
    await store.reject("u1", [(f"r{i}", 60 + i) for i in range(7)])  # capped like the history
    assert await store.rejected("u1") == {f"r{i}" for i in range(2, 7)}


async def test_the_sqlite_store_remembers_across_a_reopen(tmp_path: Path) -> None:
    first = SqliteHistoryStore(local_state.connect(tmp_path), max_len=5)
    await first.seed({"u1": [("a", 1), ("b", 2)]})
    await first.append("u1", [("c", 3)])
    await first.reject("u1", [("b", 4), ("x", 5)])
    again = SqliteHistoryStore(local_state.connect(tmp_path), max_len=5)  # what a restarted process reads
    assert await again.recent("u1", 10) == [("a", 1), ("c", 3)]
    assert await again.rejected("u1") == {"b", "x"}
    assert await again.seed({"u1": [("z", 9)]}) == 0  # a known user is not seeded again
