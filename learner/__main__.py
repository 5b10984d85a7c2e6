"""`python -m learner` (also `llm4rec learn`): the Kafka-consuming learner on the RECSYS_ settings."""

from __future__ import annotations

import asyncio

from prometheus_client import start_http_server
from redis.asyncio import Redis

from common.adapter_store import RedisAdapterStore
from learner.build import build_learner, resume
from learner.consumer import run
from learner.metrics import LearnerMetrics
from learner.pipeline import GuardConfig
from learner.settings import LearnerSettings
from learner.trainer import OnlineConfig


async def main(settings: LearnerSettings) -> None:
    metrics = LearnerMetrics()
    if settings.learner_metrics_port:
        start_http_server(settings.learner_metrics_port, registry=metrics.registry)
    redis = Redis.from_url(settings.redis_url)
    store = RedisAdapterStore(redis, settings.adapter.prefix, settings.adapter.keep)
    o, g = settings.online, settings.guard
    online = OnlineConfig(lr=o.lr, momentum=o.momentum, importance_threshold=o.importance_threshold,
                          lambda_ewc=o.lambda_ewc, history_len=o.history_len)  # fmt: skip
    learner = build_learner(settings.model_dir, settings.cache_dir, store, settings.adapter, online,
                            GuardConfig(g.holdout_every, g.holdout_size, g.margin), metrics)  # fmt: skip
    await resume(learner)
    try:
        await run(learner, settings.kafka, settings.batch.size, settings.batch.max_wait_ms, metrics)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(LearnerSettings()))
