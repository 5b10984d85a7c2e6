"""`python -m learner` (also `llm4rec learn`): the Kafka-consuming learner on the RECSYS_ settings."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.adapter_store import RedisAdapterStore
from common.process import limit_malloc_arenas
from learner.build import learner_from_settings, resume
from learner.consumer import run
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner
from learner.settings import LearnerSettings

log = structlog.get_logger()


async def main(settings: LearnerSettings) -> None:
    metrics = LearnerMetrics()
    if settings.learner_metrics_port:
        start_http_server(settings.learner_metrics_port, registry=metrics.registry)
    redis = Redis.from_url(settings.redis_url)
    store = RedisAdapterStore(redis, settings.adapter.prefix, settings.adapter.keep)
    learner = learner_from_settings(settings, store, metrics)
    await _resume_when_redis_answers(learner)
    try:
        await run(learner, settings.kafka, settings.batch.size, settings.batch.max_wait_ms, metrics)
    finally:
        await redis.aclose()


async def _resume_when_redis_answers(learner: Learner) -> None:
    """A learner started while Redis is away waits for it rather than exiting."""
    backoff = 0.5
    while True:
        try:
            await resume(learner)
            return
        except RedisError as e:
            log.warning("redis_unreachable", error=str(e), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


if __name__ == "__main__":
    limit_malloc_arenas()
    asyncio.run(main(LearnerSettings()))
