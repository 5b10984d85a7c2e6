"""The durable log of items added after training (POST /items): the service appends to it, and reads
it whole at start-up and on a model swap to rebuild the added items' content vectors in the same order;
the learner reads it to learn those items from their clicks, from the start after a restart.

Two implementations with one contract (`read(after)` returns the items appended after a cursor, in
append order, and the cursor to continue from):
- `FileItemLog`: fsynced JSON lines on the service's disk (the embedded default, whose learner runs in
  the service process);
- `RedisItemLog`: a Redis stream (the deployment with Redis, where the learner is another process;
  Redis runs with the append-only file, so the stream survives a restart of Redis too).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

import anyio
from redis.asyncio import Redis

from retrieval.catalog import NewItem

START = "0"  # the cursor before the first item


class ItemLog(Protocol):
    async def append(self, items: Sequence[NewItem]) -> None: ...

    async def read(self, after: str = START) -> tuple[list[NewItem], str]:
        """The items appended after cursor `after`, oldest first, and the cursor after the last one."""
        ...


def to_json(item: NewItem) -> str:
    return json.dumps(dataclasses.asdict(item))


def from_json(line: str | bytes) -> NewItem:
    r = json.loads(line)
    return NewItem(r["item_id"], r["title"], tuple(r["categories"]), r["year"], r["text"])


class FileItemLog:
    """Cursor: the byte offset after the last complete line read (a read starts there, not at the top)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def append(self, items: Sequence[NewItem]) -> None:
        await anyio.to_thread.run_sync(self.append_sync, items)

    async def read(self, after: str = START) -> tuple[list[NewItem], str]:
        return await anyio.to_thread.run_sync(self.read_sync, after)

    def append_sync(self, items: Sequence[NewItem]) -> None:
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.writelines(to_json(i) + "\n" for i in items)
            f.flush()
            os.fsync(f.fileno())

    def read_sync(self, after: str = START) -> tuple[list[NewItem], str]:
        if not self.path.exists():
            return [], after
        with self.path.open("rb") as f:
            f.seek(int(after))
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
        lines = complete.decode().splitlines()
        return [i for line in lines if line.strip() and (i := _parsed(line)) is not None], str(
            int(after) + len(complete)
        )


class RedisItemLog:
    """Cursor: the last stream entry id read."""

    def __init__(self, redis: Redis, key: str) -> None:
        self.redis, self.key = redis, key

    async def append(self, items: Sequence[NewItem]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:  # all of a request's items or none
            for item in items:
                pipe.xadd(self.key, {"item": to_json(item)})
            await pipe.execute()

    async def read(self, after: str = START, page: int = 1000) -> tuple[list[NewItem], str]:
        out: list[NewItem] = []
        while True:
            got = await self.redis.xrange(self.key, min=f"({after}" if after != START else "-", count=page)
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], got or [])
            out += [from_json(fields[b"item"]) for _, fields in entries]
            if entries:
                after = entries[-1][0].decode()
            if len(entries) < page:
                return out, after


def _parsed(line: str) -> NewItem | None:
    """A line cut short by a crash mid-write was never acknowledged (the fsync comes first): skipped."""
    try:
        return from_json(line)
    except (ValueError, KeyError):
        return None
