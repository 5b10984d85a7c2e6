"""The in-process adapter store's memory of applied events is bounded like Redis's TTL keys."""

from __future__ import annotations

import asyncio

from common.adapter_store import MemoryAdapterStore


def test_memory_store_forgets_the_oldest_applied_ids_beyond_capacity() -> None:
    async def run() -> tuple[list[bool], int]:
        store = MemoryAdapterStore(applied_capacity=3)
        await store.publish(1, {"blob": b"x"}, ["a", "b"])
        await store.discard(["c", "d"])  # refused updates count as processed too
        return await store.applied(["a", "b", "c", "d"]), await store.current()

    seen, current = asyncio.run(run())
    assert seen == [False, True, True, True]
    assert current == 1
