"""The embedded service's on-disk state: the event-id memory and the adapter store after a reopen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common import local_state
from common.adapter import Manifest, encode
from common.adapter_store import SqliteAdapterStore
from service.feedback import SqliteDeduper

pytestmark = pytest.mark.anyio


async def test_event_ids_stay_claimed_across_a_reopen(tmp_path: Path) -> None:
    first = SqliteDeduper(local_state.connect(tmp_path))
    assert await first.claim(["a", "b"]) == [True, True]
    await first.release(["b"])  # a request that failed to spool gives its ids back
    again = SqliteDeduper(local_state.connect(tmp_path))
    assert await again.claim(["a", "b", "c"]) == [False, True, True]


async def test_the_event_id_memory_keeps_the_newest_ids(tmp_path: Path) -> None:
    dedupe = SqliteDeduper(local_state.connect(tmp_path), capacity=10)
    for n in range(30):
        await dedupe.claim([f"e{n}"])
    assert await dedupe.claim(["e0", "e29"]) == [True, False]  # the oldest aged out, the newest is kept


async def test_published_adapters_and_applied_events_survive_a_reopen(tmp_path: Path) -> None:
    first = SqliteAdapterStore(local_state.connect(tmp_path), keep=2)
    tensors = {"A": np.ones((2, 3), np.float32)}
    for v in (1, 2, 3):
        await first.publish(v, encode(tensors, Manifest(v, "base", {"A": [2, 3]}, v), None), [f"e{v}"])
    await first.discard(["refused"])
    again = SqliteAdapterStore(local_state.connect(tmp_path), keep=2)
    assert await again.current() == 3
    assert await again.versions() == [2, 3]
    assert await again.fetch(3) == await first.fetch(3)
    assert await again.applied(["e1", "e3", "refused", "new"]) == [True, True, True, False]
