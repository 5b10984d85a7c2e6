"""The embedded default's in-process learner: with no Kafka configured, the service's in-process sink
hands every durable feedback batch to a learner in the same process, which publishes adapters into the
store the service watches (in memory, or Redis when configured). Wired here, above both packages,
because service and learner never import each other."""

from __future__ import annotations

import anyio
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from common.adapter_store import AdapterStore, MemoryAdapterStore, RedisAdapterStore
from common.events import FeedbackEvent
from learner.build import learner_from_settings, resume
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner
from learner.settings import LearnerSettings
from service.feedback import InProcessSink

log = structlog.get_logger()


def adapter_store(settings: LearnerSettings, redis_url: str | None) -> AdapterStore:
    a = settings.adapter
    return RedisAdapterStore(Redis.from_url(redis_url), a.prefix, a.keep) if redis_url else MemoryAdapterStore(a.keep)


async def attach_learner(app: FastAPI, settings: LearnerSettings, store: AdapterStore) -> Learner:
    """Build a learner for the running app's model and subscribe it to the app's in-process sink."""
    sink = app.state.sink
    assert isinstance(sink, InProcessSink), "the in-process learner is for the embedded default (no Kafka)"
    learner = await anyio.to_thread.run_sync(learner_from_settings, settings, store, LearnerMetrics())
    await resume(learner)

    async def learn(events: list[FeedbackEvent]) -> None:
        try:
            await learner.process(events)
        except Exception as e:  # the events are durable in the spool; a failed update must not block feedback
            log.warning("in_process_learning_failed", error=str(e))

    sink.subscribers.append(learn)
    log.info("in_process_learner_attached")
    return learner
