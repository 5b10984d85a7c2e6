"""Feedback ingestion: dedupe by event id -> durable spool -> user history -> event sink.

`FeedbackIngest.ingest` answers only once the events are durable in the spool (`service.spool`);
`Forwarder` drains the spool in order into an `EventSink` and commits its position after the sink
acknowledged. Two sinks: `KafkaEventSink` (aiokafka, idempotent producer, key = user id) and
`InProcessSink` (the embedded default: subscribers in this process, such as the in-process learner).

Why a write-ahead spool rather than "send, and spool on failure": a send that timed out may still have
reached the broker, so spooling it would publish it twice. Here each event is sent by one long-lived
idempotent producer until acknowledged, so a Kafka outage neither loses nor duplicates events.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog
from aiokafka import AIOKafkaProducer
from cachetools import LRUCache
from pydantic import ValidationError
from redis.asyncio import Redis
from tenacity import retry, retry_if_exception_type, wait_exponential

from common.events import FEEDBACK_TOPIC, FeedbackEvent
from retrieval.history import HistoryStore
from service.metrics import Metrics
from service.spool import Position, Record, Spool

log = structlog.get_logger()


class SinkUnavailableError(RuntimeError):
    """The sink did not acknowledge; the forwarder keeps the events and retries. `acked`: how many of
    the records, from the first, were acknowledged before the failure."""

    def __init__(self, message: str, acked: int = 0) -> None:
        super().__init__(message)
        self.acked = acked


class EventSink(Protocol):
    name: str

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> int:
        """Publish (key, value) records in order; returns how many were acknowledged before a failure
        (then raises SinkUnavailableError), so a retry resends only the rest."""
        ...

    async def close(self) -> None: ...


class KafkaEventSink:
    name = "kafka"

    def __init__(self, bootstrap_servers: str, topic: str = FEEDBACK_TOPIC, request_timeout_ms: int = 30_000) -> None:
        self.bootstrap, self.topic, self.timeout_ms = bootstrap_servers, topic, request_timeout_ms
        self._producer: AIOKafkaProducer | None = None

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is None:
            p = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, client_id="llm4rec-service", acks="all",
                enable_idempotence=True,  # broker-side dedupe of the producer's own retries
                request_timeout_ms=self.timeout_ms, linger_ms=2,
            )  # fmt: skip
            try:
                await p.start()
            except Exception as e:  # unreachable brokers surface as several aiokafka error types
                await p.stop()
                raise SinkUnavailableError(f"kafka unreachable: {e}") from e
            self._producer = p
        return self._producer

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> int:
        producer = await self._connected()
        futures = [await producer.send(self.topic, value=v, key=k) for k, v in records]
        done = 0
        for fut in futures:
            try:
                await fut
            except Exception as e:
                raise SinkUnavailableError(f"kafka send failed after {done} of {len(records)}: {e}", done) from e
            done += 1
        return done

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


Subscriber = Callable[[list[FeedbackEvent]], Awaitable[None]]


class InProcessSink:
    """The embedded default (no Kafka configured): hands events to in-process subscribers."""

    name = "in-process"

    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []

    async def publish(self, records: Sequence[tuple[bytes, bytes]]) -> int:
        events = []
        for _, line in records:
            try:
                events.append(FeedbackEvent.model_validate_json(line))
            except ValidationError as e:  # spooled under older rules: published, not learnt (as Kafka's DLQ)
                log.warning("spooled_event_invalid", error=str(e)[:300])
        for s in self.subscribers:
            await s(events)
        return len(records)

    async def close(self) -> None:
        return None


class Forwarder:
    """Drains the spool into the sink in order; one instance per spool."""

    def __init__(self, spool: Spool, sink: EventSink, metrics: Metrics, batch: int = 500) -> None:
        self.spool, self.sink, self.metrics, self.batch = spool, sink, metrics, batch
        self.healthy = True
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        # catching up a backlog (after an outage, or left by a previous process): counted as replayed
        self._replaying = spool.pending > 0

    def notify(self) -> None:
        self._wake.set()

    async def wait_published(self, pos: Position, timeout: float) -> bool:
        """Wait until everything up to `pos` is published, at most `timeout` seconds."""
        with anyio.move_on_after(timeout):
            async with self._progress:
                await self._progress.wait_for(lambda: self.spool.committed >= pos)
        return self.spool.committed >= pos

    async def run(self) -> None:
        while True:
            try:
                sent = await self._forward()
            except Exception:  # a bug must not end forwarding for good: the events wait in the spool
                log.exception("forwarder_failed")
                sent = False
            if not sent:
                self._wake.clear()
                with anyio.move_on_after(1.0):
                    await self._wake.wait()

    # Logged once per outage (event_sink_down / event_sink_up in `_send`), not per retry: during a Kafka
    # outage this retries for as long as it lasts, and the metrics count the failures.
    @retry(retry=retry_if_exception_type(SinkUnavailableError), wait=wait_exponential(multiplier=0.1, max=5.0),
           reraise=True)  # fmt: skip
    async def _forward(self) -> bool:
        """Send the next batch from the spool's committed position; False if there is none. Raises
        SinkUnavailableError (retried: the rest of the batch is read again from the spool and resent)."""
        records = await anyio.to_thread.run_sync(self.spool.read, self.spool.committed, self.batch)
        if not records:
            return False
        await self._send(records)
        return True

    async def _send(self, records: list[Record]) -> None:
        """Publish, commit what the sink acknowledged, and keep the health flag and metrics current; then
        re-raise the sink's failure, if any, for the retry."""
        payloads = [(_kafka_key(r.line), r.line) for r in records]
        done, failure = 0, None
        try:
            done = await self.sink.publish(payloads)
        except SinkUnavailableError as e:
            done, failure = e.acked, e
            if self.healthy:
                log.warning("event_sink_down", sink=self.sink.name, error=str(e))
            self.metrics.feedback_sink_errors.inc()
            self._replaying = True
        ok = failure is None
        if done:
            await anyio.to_thread.run_sync(self.spool.commit, records[done - 1].end, done)
            self.metrics.feedback_published.inc(done)
            if self._replaying:
                self.metrics.feedback_replayed.inc(done)
            async with self._progress:
                self._progress.notify_all()
        self._replaying = self._replaying and (not ok or self.spool.pending > 0)
        if ok and not self.healthy:
            log.info("event_sink_up", sink=self.sink.name)
        self.healthy = ok
        self.metrics.feedback_sink_up.set(1 if ok else 0)
        self.metrics.feedback_spool_pending.set(self.spool.pending)
        if failure is not None:
            raise failure


class EventIdDeduper(Protocol):
    async def claim(self, ids: Sequence[str]) -> list[bool]:
        """True for ids seen for the first time (now claimed), False for duplicates."""
        ...

    async def release(self, ids: Sequence[str]) -> None: ...


class MemoryDeduper:
    """The newest `capacity` event ids by last sighting (a duplicate counts as a sighting): least
    recently seen forgotten first."""

    def __init__(self, capacity: int = 1_000_000) -> None:
        self.capacity = capacity
        self._seen: LRUCache[str, None] = LRUCache(maxsize=capacity)

    async def claim(self, ids: Sequence[str]) -> list[bool]:
        out = []
        for i in ids:
            out.append(i not in self._seen)
            self._seen[i] = None  # (re)inserting makes it the most recently seen
        return out

    async def release(self, ids: Sequence[str]) -> None:
        for i in ids:
            self._seen.pop(i, None)


class SqliteDeduper:
    """The event-id memory of the embedded service on disk (`common.local_state`): a re-sent event is a
    duplicate across restarts too. Keeps the newest `capacity` ids by first sighting."""

    def __init__(self, db: sqlite3.Connection, capacity: int = 1_000_000) -> None:
        self._db, self.capacity, self._since_prune = db, capacity, 0
        db.execute("CREATE TABLE IF NOT EXISTS event_ids (id TEXT PRIMARY KEY)")

    async def claim(self, ids: Sequence[str]) -> list[bool]:
        self._db.execute("BEGIN")  # microseconds (WAL, no fsync), and it must precede the 202
        fresh = [self._db.execute("INSERT OR IGNORE INTO event_ids (id) VALUES (?)", (i,)).rowcount == 1 for i in ids]
        self._db.execute("COMMIT")
        self._since_prune += len(ids)
        if self._since_prune > self.capacity // 10:
            self._since_prune = 0
            self._db.execute("DELETE FROM event_ids WHERE rowid <= (SELECT max(rowid) FROM event_ids) - ?",
                             (self.capacity,))  # fmt: skip
        return fresh

    async def release(self, ids: Sequence[str]) -> None:
        self._db.executemany("DELETE FROM event_ids WHERE id = ?", [(i,) for i in ids])


class RedisDeduper:
    """SET NX with a TTL per event id: shared by service replicas. If Redis fails, falls back to
    in-process memory (dedupe within this process only) rather than refusing feedback."""

    def __init__(self, redis: Redis, prefix: str, ttl_s: int, metrics: Metrics) -> None:
        self.redis, self.prefix, self.ttl, self.metrics = redis, prefix, ttl_s, metrics
        self.fallback = MemoryDeduper()

    async def claim(self, ids: Sequence[str]) -> list[bool]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.set(self.prefix + i, 1, nx=True, ex=self.ttl)
                return [bool(x) for x in await pipe.execute()]
        except Exception as e:  # redis down: degrade, do not drop feedback
            self.metrics.dependency_errors.labels("redis").inc()
            log.warning("dedupe_degraded", error=str(e))
            return await self.fallback.claim(ids)

    async def release(self, ids: Sequence[str]) -> None:
        await self.fallback.release(ids)
        try:
            await self.redis.delete(*(self.prefix + i for i in ids))
        except Exception:  # best effort: a claimed id that never landed only blocks a retry for the TTL
            self.metrics.dependency_errors.labels("redis").inc()


@dataclass(frozen=True)
class Receipt:
    accepted: int
    duplicates: int
    published: bool  # all accepted events acknowledged by the sink when the answer was sent


class FeedbackIngest:
    def __init__(self, spool: Spool, forwarder: Forwarder, deduper: EventIdDeduper, history: HistoryStore,
                 metrics: Metrics, ack_wait_s: float = 0.25) -> None:  # fmt: skip
        self.spool, self.forwarder, self.deduper, self.history = spool, forwarder, deduper, history
        self.metrics, self.ack_wait_s = metrics, ack_wait_s

    async def ingest(self, events: Sequence[FeedbackEvent]) -> Receipt:
        now = int(time.time())
        events = [e if e.timestamp else e.model_copy(update={"timestamp": now}) for e in events]
        first = _first_in_request(events)
        claimed = await self.deduper.claim([e.event_id for e, f in zip(events, first, strict=True) if f])
        it = iter(claimed)
        fresh = [e for e, f in zip(events, first, strict=True) if f and next(it)]
        self.metrics.feedback_duplicates.inc(len(events) - len(fresh))
        if not fresh:
            return Receipt(0, len(events), True)
        try:
            pos = await anyio.to_thread.run_sync(self.spool.append, [e.model_dump_json().encode() for e in fresh])
        except Exception:
            await self.deduper.release([e.event_id for e in fresh])
            raise
        self.forwarder.notify()
        self.metrics.feedback_accepted.inc(len(fresh))
        self.metrics.feedback_spool_pending.set(self.spool.pending)
        await self._append_history(fresh)
        published = self.forwarder.healthy and await self.forwarder.wait_published(pos, self.ack_wait_s)
        if not published:
            self.metrics.feedback_spooled.inc(len(fresh))
        return Receipt(len(fresh), len(events) - len(fresh), published)

    async def _append_history(self, events: Sequence[FeedbackEvent]) -> None:
        """Before the 202: the user's next list already follows what they just did (positives join the
        history, rejections leave it and are excluded from then on), in the events' order."""
        runs: list[tuple[str, bool, list[tuple[str, int]]]] = []  # (user, positive, entries)
        for e in events:
            if runs and runs[-1][:2] == (e.user_id, e.is_positive):
                runs[-1][2].append((e.item_id, e.timestamp))
            else:
                runs.append((e.user_id, e.is_positive, [(e.item_id, e.timestamp)]))
        try:
            for user, positive, entries in runs:
                await (self.history.append if positive else self.history.reject)(user, entries)
        except Exception as e:  # the events are durable; only the next answer's freshness degrades
            self.metrics.dependency_errors.labels("history").inc()
            log.warning("history_append_failed", error=str(e))


def _kafka_key(line: bytes) -> bytes:
    """A spooled line's Kafka key (its user id), read without validating it: a line accepted under older,
    looser rules stays publishable (the learner dead-letters what it cannot use) instead of stopping the
    forwarder."""
    try:
        return str(json.loads(line)["user_id"]).encode()
    except (ValueError, KeyError, TypeError):
        return b""


def _first_in_request(events: Sequence[FeedbackEvent]) -> list[bool]:
    seen: set[str] = set()
    out = []
    for e in events:
        out.append(e.event_id not in seen)
        seen.add(e.event_id)
    return out
