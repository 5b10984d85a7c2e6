"""The embedded default's in-process learner: with no Kafka configured, the service's in-process sink
hands every durable feedback batch to a learner in the same process, which publishes adapters into the
store the service watches (in memory, or Redis when configured). Wired here, above both packages,
because service and learner never import each other."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import anyio
import structlog
from redis.asyncio import Redis
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from common import local_state
from common.adapter_store import AdapterStore, MemoryAdapterStore, RedisAdapterStore, SqliteAdapterStore
from common.events import FeedbackEvent
from common.process import freeze_startup_objects, refreeze
from learner.build import learner_from_settings, resume
from learner.fine_tune import PeriodicFineTune
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner
from learner.settings import LearnerSettings
from service.feedback import InProcessSink
from service.state import ServiceState

log = structlog.get_logger()


def adapter_store(settings: LearnerSettings, redis_url: str | None, state_dir: Path | None) -> AdapterStore:
    """Redis when configured; else the service process's own store, on disk under `state_dir` if set."""
    a = settings.adapter
    if redis_url:
        return RedisAdapterStore(Redis.from_url(redis_url), a.prefix, a.keep)
    return SqliteAdapterStore(local_state.connect(state_dir), a.keep) if state_dir else MemoryAdapterStore(a.keep)


class EmbeddedLearner:
    """The in-process learner and its inbox. The inbox is subscribed to the sink from construction, so
    no event goes unlearnt while a learner is (re)built; `attach` builds a learner for the served model
    and, called again after a model swap, replaces it between two batches."""

    def __init__(self, state: ServiceState, settings: LearnerSettings, store: AdapterStore) -> None:
        sink = state.sink
        assert isinstance(sink, InProcessSink), "the in-process learner is for the embedded default (no Kafka)"
        self.state, self.settings, self.store = state, settings, store
        self.metrics = LearnerMetrics()
        state.metrics.also_serve(self.metrics.registry)  # the learner's figures on the service's /metrics
        db = local_state.connect(state.settings.state_dir) if state.settings.state_dir else local_state.in_memory()
        self.inbox = Inbox(db)
        self.learner: Learner | None = None
        self._lock = asyncio.Lock()  # a learner is replaced between batches, never during one
        sink.subscribers.append(self._put)

    async def _put(self, events: list[FeedbackEvent]) -> None:
        self.inbox.put(events)  # committed before the spool lets them go; the forwarder never waits on training

    async def attach(self) -> Learner:
        """A learner for the model served now (resumed from the store's adapter if it was trained for
        it), replacing the one before."""
        s = self.state
        learner = await anyio.to_thread.run_sync(learner_from_settings, self.settings, self.store, self.metrics,
                                                s.history, s.item_log)  # fmt: skip
        await resume(learner)
        async with self._lock:
            first, self.learner = self.learner is None, learner
        if first:
            s.tasks.append(asyncio.create_task(self._drain()))  # stopped with the service
            freeze_startup_objects()  # the learner's copy of the model joins the service's frozen start-up heap
        log.info("in_process_learner_attached", base_model=learner.base_model)
        return learner

    async def _drain(self) -> None:
        """Micro-batches like the Kafka learner's: whatever arrived, at most every `in_process_wait_ms`;
        a batch leaves the inbox once processed (or given up)."""
        b = self.settings.batch
        while True:
            await self.inbox.arrived.wait()
            await asyncio.sleep(b.in_process_wait_ms / 1000)
            last, batch = self.inbox.peek(b.size)
            if not batch:
                self.inbox.arrived.clear()
                continue
            async with self._lock:
                assert self.learner is not None
                await _learn_with_retries(self.learner, batch, b.max_failures)
            self.inbox.done(last)


async def learn_in_process(state: ServiceState, settings: LearnerSettings, store: AdapterStore,
                           build_log: Path) -> EmbeddedLearner:  # fmt: skip
    """The embedded default's learning, once a trained model serves: the streaming learner, and the
    periodic fine-tune (when on, and the service keeps local state) whose models are swapped in here."""
    embedded = EmbeddedLearner(state, settings, store)
    await embedded.attach()
    f = settings.fine_tune
    if f.every_events > 0 and state.settings.state_dir is not None:

        async def swap_in(old: str, new: str) -> None:
            await state.load_trained(replacing=True, drop_replaced=True)
            await embedded.attach()  # the old adapter was fitted to the old model: a fresh one starts
            await state.serving.retired()
            refreeze()  # the replaced model and learner are garbage now

        def status(step: str) -> None:
            state.serving.building = step

        tuner = PeriodicFineTune(state.settings, f, build_log, swap_in, embedded.metrics, status,
                                 busy=lambda: bool(state.serving.building))  # fmt: skip
        assert isinstance(state.sink, InProcessSink)
        state.sink.subscribers.append(tuner.record)
        state.tasks.append(asyncio.create_task(tuner.run()))
        log.info("periodic_fine_tune_on", every_events=f.every_events, pending=tuner.pending.count)
    return embedded


class Inbox:
    """The in-process learner's queue, a SQLite table (on disk under `state_dir`, else in memory). The
    forwarder's hand-off is committed before the spool lets the events go, and events leave the inbox
    only once the learner has processed them: a kill in between loses nothing, and the next start
    learns them (an event applied before the kill is known by its id and skipped)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.execute("CREATE TABLE IF NOT EXISTS learner_inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "event TEXT NOT NULL)")  # fmt: skip
        self.arrived = asyncio.Event()
        if db.execute("SELECT 1 FROM learner_inbox LIMIT 1").fetchone():
            self.arrived.set()  # left by the last run

    def put(self, events: list[FeedbackEvent]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO learner_inbox (event) VALUES (?)", [(e.model_dump_json(),) for e in events])
        self._db.execute("COMMIT")
        self.arrived.set()

    def peek(self, n: int) -> tuple[int, list[FeedbackEvent]]:
        """The oldest `n` events and the position of the last one."""
        rows = self._db.execute("SELECT seq, event FROM learner_inbox ORDER BY seq LIMIT ?", (n,)).fetchall()
        return (rows[-1][0] if rows else 0), [FeedbackEvent.model_validate_json(e) for _, e in rows]

    def done(self, last: int) -> None:
        self._db.execute("DELETE FROM learner_inbox WHERE seq <= ?", (last,))


async def _learn_with_retries(learner: Learner, batch: list[FeedbackEvent], attempts: int) -> None:
    """A batch whose learning fails is retried (all or nothing: a failed attempt leaves no trace); after
    `attempts` it is given up. The events stay durable in the spool and the history either way."""
    try:
        async for attempt in AsyncRetrying(stop=stop_after_attempt(attempts), wait=wait_exponential(0.2, max=5),
                                           reraise=True):  # fmt: skip
            with attempt:
                await learner.process(batch)
    except Exception as e:
        log.warning("in_process_learning_given_up", events=len(batch), attempts=attempts, error=str(e))
