"""Where adapter versions live between the learner and the service (layout in `common.adapter`).

`RedisAdapterStore` is the cross-process store: one MULTI/EXEC transaction writes the version's hash,
marks the events it applied (so a restarted learner skips them), appends them to an audit log, moves
the pointer and publishes the notice. `MemoryAdapterStore` keeps the same contract in one process
(the embedded default: in-process learner and service share it).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Protocol

from cachetools import FIFOCache
from redis.asyncio import Redis

from common.adapter import KEY_PREFIX, channel, pointer_key, version_key

APPLIED_TTL_S = 30 * 86_400
AUDIT_LEN = 1_000_000


class AdapterStore(Protocol):
    async def publish(self, version: int, fields: dict[str, bytes], event_ids: Sequence[str]) -> None: ...

    async def discard(self, event_ids: Sequence[str]) -> None:
        """Record events whose update was refused: processed, never to be applied."""
        ...

    async def current(self) -> int:
        """The published version (0: none yet)."""
        ...

    async def fetch(self, version: int) -> dict[bytes, bytes] | None: ...

    async def applied(self, event_ids: Sequence[str]) -> list[bool]:
        """Whether each event already went into a published adapter."""
        ...

    async def versions(self) -> list[int]:
        """Stored versions, oldest first (what a rollback can go back to)."""
        ...


class RedisAdapterStore:
    def __init__(self, redis: Redis, prefix: str = KEY_PREFIX, keep: int = 5) -> None:
        self.redis, self.prefix, self.keep = redis, prefix, keep
        self._index = f"{prefix}versions"  # sorted set of stored versions

    async def publish(self, version: int, fields: dict[str, bytes], event_ids: Sequence[str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(version_key(self.prefix, version), mapping=fields)  # type: ignore[arg-type]
            for e in event_ids:
                pipe.set(f"{self.prefix}applied:{e}", version, ex=APPLIED_TTL_S)
            if event_ids:
                pipe.rpush(f"{self.prefix}applied-log", *event_ids)
                pipe.ltrim(f"{self.prefix}applied-log", -AUDIT_LEN, -1)
            pipe.set(pointer_key(self.prefix), version)
            pipe.zadd(self._index, {str(version): version})
            pipe.publish(channel(self.prefix), version)
            await pipe.execute()
        old = await self._range(0, -self.keep - 1)
        if old:  # beyond the last `keep`: gone (the index says which, no keyspace scan)
            await self.redis.delete(*(version_key(self.prefix, v) for v in old))
            await self.redis.zrem(self._index, *(str(v) for v in old))

    async def discard(self, event_ids: Sequence[str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for e in event_ids:
                pipe.set(f"{self.prefix}applied:{e}", "discarded", ex=APPLIED_TTL_S)
            await pipe.execute()

    async def current(self) -> int:
        raw = await self.redis.get(pointer_key(self.prefix))
        return int(raw) if raw is not None else 0

    async def fetch(self, version: int) -> dict[bytes, bytes] | None:
        fields = await self.redis.hgetall(version_key(self.prefix, version))
        return {_b(k): _b(v) for k, v in fields.items()} or None

    async def applied(self, event_ids: Sequence[str]) -> list[bool]:
        if not event_ids:
            return []
        found = await self.redis.mget([f"{self.prefix}applied:{e}" for e in event_ids])
        return [x is not None for x in found]

    async def versions(self) -> list[int]:
        return await self._range(0, -1)

    async def _range(self, start: int, end: int) -> list[int]:
        members: list[bytes] = await self.redis.zrange(self._index, start, end)  # type: ignore[assignment]
        return [int(m) for m in members]

    async def audit_log(self) -> list[str]:
        return [_b(x).decode() for x in await self.redis.lrange(f"{self.prefix}applied-log", 0, -1)]


def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


class MemoryAdapterStore:
    """One process's store (the embedded default). It remembers the newest `applied_capacity` event ids,
    the in-process counterpart of the Redis keys' TTL, so a long run's memory stays bounded."""

    def __init__(self, keep: int = 5, applied_capacity: int = 1_000_000) -> None:
        self.keep, self.applied_capacity = keep, applied_capacity
        self._versions: dict[int, dict[bytes, bytes]] = {}
        self._current = 0
        self._applied: FIFOCache[str, None] = FIFOCache(maxsize=applied_capacity)
        self.published = asyncio.Event()  # set on every publish: the in-process watcher's notice

    async def publish(self, version: int, fields: dict[str, bytes], event_ids: Sequence[str]) -> None:
        self._versions[version] = {k.encode(): v for k, v in fields.items()}
        self._remember(event_ids)
        self._current = version
        for old in sorted(self._versions)[: -self.keep]:
            del self._versions[old]
        self.published.set()

    async def discard(self, event_ids: Sequence[str]) -> None:
        self._remember(event_ids)

    def _remember(self, event_ids: Sequence[str]) -> None:
        for e in event_ids:
            if e not in self._applied:  # the first record is the one that ages out, as before
                self._applied[e] = None

    async def current(self) -> int:
        return self._current

    async def fetch(self, version: int) -> dict[bytes, bytes] | None:
        return self._versions.get(version)

    async def applied(self, event_ids: Sequence[str]) -> list[bool]:
        return [e in self._applied for e in event_ids]

    async def versions(self) -> list[int]:
        return sorted(self._versions)


class SqliteAdapterStore(MemoryAdapterStore):
    """The in-process store kept on disk (`common.local_state`): after a restart of the embedded service
    it still serves the newest published version (versions never go back) and the learner still knows
    which events it applied."""

    def __init__(self, db: sqlite3.Connection, keep: int = 5, applied_capacity: int = 1_000_000) -> None:
        super().__init__(keep, applied_capacity)
        self._db = db
        db.execute("CREATE TABLE IF NOT EXISTS adapter_fields (version INTEGER NOT NULL, name TEXT NOT NULL, "
                   "value BLOB NOT NULL, PRIMARY KEY (version, name))")  # fmt: skip
        db.execute("CREATE TABLE IF NOT EXISTS applied_events (id TEXT PRIMARY KEY)")
        for version, name, value in db.execute("SELECT version, name, value FROM adapter_fields"):
            self._versions.setdefault(version, {})[name.encode()] = bytes(value)
        self._current = max(self._versions, default=0)
        newest = db.execute("SELECT id FROM applied_events ORDER BY rowid DESC LIMIT ?", (applied_capacity,))
        self._remember([row[0] for row in reversed(newest.fetchall())])

    async def publish(self, version: int, fields: dict[str, bytes], event_ids: Sequence[str]) -> None:
        self._db.execute("BEGIN")  # the version, its weights and the events it applied: all or nothing
        self._db.executemany("INSERT OR REPLACE INTO adapter_fields VALUES (?, ?, ?)",
                             [(version, k, v) for k, v in fields.items()])  # fmt: skip
        self._save_applied(event_ids)
        self._db.execute("DELETE FROM adapter_fields WHERE version NOT IN (SELECT DISTINCT version FROM "
                         "adapter_fields ORDER BY version DESC LIMIT ?)", (self.keep,))  # fmt: skip
        self._db.execute("COMMIT")
        await super().publish(version, fields, event_ids)

    async def discard(self, event_ids: Sequence[str]) -> None:
        self._db.execute("BEGIN")
        self._save_applied(event_ids)
        self._db.execute("COMMIT")
        await super().discard(event_ids)

    def _save_applied(self, event_ids: Sequence[str]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO applied_events (id) VALUES (?)", [(e,) for e in event_ids])
        self._db.execute("DELETE FROM applied_events WHERE rowid <= (SELECT max(rowid) FROM applied_events) - ?",
                         (self.applied_capacity,))  # fmt: skip
