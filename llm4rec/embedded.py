"""The embedded default's in-process learner: with no Kafka configured, the service's in-process sink
hands every durable feedback batch to a learner in the same process, which publishes adapters into the
store the service watches (in memory, or Redis when configured). Wired here, above both packages,
because service and learner never import each other."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import structlog
from redis.asyncio import Redis
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from common import local_state
from common.adapter_store import AdapterStore, MemoryAdapterStore, RedisAdapterStore, SqliteAdapterStore
from common.events import FeedbackEvent
from common.process import freeze_startup_objects
from learner.build import learner_from_settings, resume
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


async def attach_learner(state: ServiceState, settings: LearnerSettings, store: AdapterStore) -> Learner:
    """Build a learner for the served (trained) model and subscribe it to the in-process sink."""
    sink = state.sink
    assert isinstance(sink, InProcessSink), "the in-process learner is for the embedded default (no Kafka)"
    metrics = LearnerMetrics()
    state.metrics.also_serve(metrics.registry)  # the learner's figures on the service's /metrics
    learner = await anyio.to_thread.run_sync(learner_from_settings, settings, store, metrics, state.history,
                                            state.item_log)  # fmt: skip
    await resume(learner)

    queue: asyncio.Queue[list[FeedbackEvent]] = asyncio.Queue()

    async def learn(events: list[FeedbackEvent]) -> None:
        queue.put_nowait(events)  # the forwarder never waits on training

    async def drain() -> None:
        """Micro-batches like the Kafka learner's: whatever arrived, at most every `in_process_wait_ms`."""
        while True:
            batch = await queue.get()
            await asyncio.sleep(settings.batch.in_process_wait_ms / 1000)
            while not queue.empty() and len(batch) < settings.batch.size:
                batch += queue.get_nowait()
            await _learn_with_retries(learner, batch, settings.batch.max_failures)

    sink.subscribers.append(learn)
    freeze_startup_objects()  # the learner's copy of the model joins the service's frozen start-up heap
    state.tasks.append(asyncio.create_task(drain()))  # stopped with the service
    log.info("in_process_learner_attached")
    return learner


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
