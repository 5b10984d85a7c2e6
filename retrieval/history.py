"""Per-user interaction history: what the generative user model reads at request time, and the items
the user rejected (a dislike, a low rating), which are never recommended to them again.

Redis (shared by service replicas, survives a service restart): one sorted set per user, member =
item id, score = event time, capped at the newest `max_len` items; re-interacting with an item moves it
to its newest time, and out-of-order events land in time order. Rejections live in a second sorted set
beside it (key = history key + `\x1erejected`: ids refuse control characters, so no user's history key
can collide with it). A rejection takes the item out of the history (it is not a taste to follow); a
later positive event on it takes it back. The in-process store keeps the same semantics for the
embedded default.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Protocol

from redis.asyncio import Redis

from models.data import RecDataset

Entry = tuple[str, int]  # (external item id, unix seconds)


class HistoryStore(Protocol):
    max_len: int

    async def append(self, user: str, entries: Sequence[Entry]) -> None: ...

    async def recent(self, user: str, n: int) -> list[Entry]:
        """The user's newest n items, oldest first."""
        ...

    async def seed(self, histories: Mapping[str, Sequence[Entry]]) -> int:
        """Load histories for users that have none yet (startup from the dataset); returns users loaded."""
        ...

    async def reject(self, user: str, entries: Sequence[Entry]) -> None:
        """The user does not want these items: out of the history, never recommended to them again."""
        ...

    async def rejected(self, user: str) -> set[str]:
        """The items the user rejected (the newest `max_len`)."""
        ...


class MemoryHistoryStore:
    def __init__(self, max_len: int = 200) -> None:
        self.max_len = max_len
        self._by_user: dict[str, dict[str, int]] = {}
        self._rejected: dict[str, dict[str, int]] = {}

    async def append(self, user: str, entries: Sequence[Entry]) -> None:
        _add(self._by_user, user, entries, self.max_len)
        _discard(self._rejected, user, entries)

    async def reject(self, user: str, entries: Sequence[Entry]) -> None:
        _add(self._rejected, user, entries, self.max_len)
        _discard(self._by_user, user, entries)

    async def rejected(self, user: str) -> set[str]:
        return set(self._rejected.get(user, ()))

    async def recent(self, user: str, n: int) -> list[Entry]:
        return sorted(self._by_user.get(user, {}).items(), key=lambda e: (e[1], e[0]))[-n:] if n > 0 else []

    async def seed(self, histories: Mapping[str, Sequence[Entry]]) -> int:
        fresh = [u for u in histories if u not in self._by_user]
        for u in fresh:
            await self.append(u, histories[u])
        return len(fresh)


class SqliteHistoryStore(MemoryHistoryStore):
    """The in-process store written through to SQLite (`common.local_state`): the embedded service
    remembers what users did across a restart. Reads stay in memory; the table is read once, at start."""

    def __init__(self, db: sqlite3.Connection, max_len: int = 200) -> None:
        super().__init__(max_len)
        self._db = db
        db.execute("CREATE TABLE IF NOT EXISTS history (user TEXT NOT NULL, item TEXT NOT NULL, ts INTEGER NOT NULL, "
                   "rejected INTEGER NOT NULL, PRIMARY KEY (user, item)) WITHOUT ROWID")  # fmt: skip
        rows: dict[tuple[str, bool], list[Entry]] = {}
        for user, item, ts, rejected in db.execute("SELECT user, item, ts, rejected FROM history"):
            rows.setdefault((user, bool(rejected)), []).append((item, ts))
        for (user, rejected), entries in rows.items():
            _add(self._rejected if rejected else self._by_user, user, entries, max_len)

    async def append(self, user: str, entries: Sequence[Entry]) -> None:
        await super().append(user, entries)
        self._write(user, entries, rejected=False)

    async def reject(self, user: str, entries: Sequence[Entry]) -> None:
        await super().reject(user, entries)
        self._write(user, entries, rejected=True)

    def _write(self, user: str, entries: Sequence[Entry], rejected: bool) -> None:
        # on the event loop: a WAL commit without fsync takes microseconds, and it must precede the 202
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO history VALUES (?, ?, ?, ?) ON CONFLICT (user, item) DO UPDATE SET "
            "ts = max(ts, excluded.ts), rejected = excluded.rejected",
            [(user, item, ts, int(rejected)) for item, ts in _newest(entries).items()],
        )
        self._db.execute("COMMIT")


class RedisHistoryStore:
    def __init__(self, redis: Redis, prefix: str = "recsys:history:", max_len: int = 200) -> None:
        self.redis, self.prefix, self.max_len = redis, prefix, max_len

    async def append(self, user: str, entries: Sequence[Entry]) -> None:
        await self._move(self.prefix + user, self._rejected_key(user), entries)

    async def reject(self, user: str, entries: Sequence[Entry]) -> None:
        await self._move(self._rejected_key(user), self.prefix + user, entries)

    async def rejected(self, user: str) -> set[str]:
        members: list[bytes] = await self.redis.zrange(self._rejected_key(user), 0, -1)  # type: ignore[assignment]
        return {m.decode() for m in members}

    def _rejected_key(self, user: str) -> str:
        return self.prefix + user + "\x1erejected"

    async def _move(self, into: str, out_of: str, entries: Sequence[Entry]) -> None:
        """Add the entries to one set and take them out of the other, in one transaction."""
        if not entries:
            return
        newest = _newest(entries)
        async with self.redis.pipeline(transaction=True) as pipe:
            # GT adds new members and moves existing ones only forward: a late duplicate changes nothing
            pipe.zadd(into, newest, gt=True)
            pipe.zremrangebyrank(into, 0, -self.max_len - 1)
            pipe.zrem(out_of, *newest)
            await pipe.execute()

    async def recent(self, user: str, n: int) -> list[Entry]:
        if n <= 0:
            return []
        rows: list[tuple[bytes, float]] = await self.redis.zrange(self.prefix + user, -n, -1, withscores=True)  # type: ignore[assignment]
        return [(m.decode(), int(s)) for m, s in rows]

    async def seed(self, histories: Mapping[str, Sequence[Entry]]) -> int:
        users = list(histories)
        loaded = 0
        for lo in range(0, len(users), 500):
            chunk = users[lo : lo + 500]
            async with self.redis.pipeline(transaction=False) as pipe:
                for u in chunk:
                    pipe.exists(self.prefix + u)
                exists = await pipe.execute()
            for u, there in zip(chunk, exists, strict=True):
                if not there:
                    await self.append(u, histories[u][-self.max_len :])
                    loaded += 1
        return loaded


def dataset_histories(data: RecDataset) -> dict[str, list[Entry]]:
    """Every user's known interactions (external ids, time order): where history stores start."""
    inter = data.interactions
    out: dict[str, list[Entry]] = {}
    for u, i, t in zip(inter.user.tolist(), inter.item.tolist(), inter.timestamp.tolist(), strict=True):
        out.setdefault(data.user_ids[u], []).append((data.item_ids[i], int(t)))
    return out


def _add(sets: dict[str, dict[str, int]], user: str, entries: Sequence[Entry], max_len: int) -> None:
    h = sets.setdefault(user, {})
    for item, ts in _newest(entries).items():
        h[item] = max(ts, h.get(item, ts))
    if len(h) > max_len:
        sets[user] = dict(sorted(h.items(), key=lambda e: (e[1], e[0]))[-max_len:])


def _discard(sets: dict[str, dict[str, int]], user: str, entries: Sequence[Entry]) -> None:
    h = sets.get(user)
    if h:
        for item, _ in entries:
            h.pop(item, None)


def _newest(entries: Sequence[Entry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item, ts in entries:
        out[item] = max(ts, out.get(item, ts))
    return out
