"""`python -m learner` (also `llm4rec learn`): the Kafka-consuming learner on the RECSYS_ settings."""

from __future__ import annotations

import asyncio

from prometheus_client import start_http_server
from redis.asyncio import Redis

from common.adapter_store import RedisAdapterStore
from learner.build import learner_from_settings, resume
from learner.consumer import run
from learner.metrics import LearnerMetrics
from learner.settings import LearnerSettings


async def main(settings: LearnerSettings) -> None:
    metrics = LearnerMetrics()
    if settings.learner_metrics_port:
        start_http_server(settings.learner_metrics_port, registry=metrics.registry)
    redis = Redis.from_url(settings.redis_url)
    store = RedisAdapterStore(redis, settings.adapter.prefix, settings.adapter.keep)
    learner = learner_from_settings(settings, store, metrics)
    await resume(learner)
    try:
        await run(learner, settings.kafka, settings.batch.size, settings.batch.max_wait_ms, metrics)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(LearnerSettings()))
