"""The Kafka side of the learner: consume feedback in micro-batches (size or time, whichever first),
send poison records to the dead-letter topic with the reason, hand the rest to `Learner.process`, and
commit offsets only after the update they fed is published (at-least-once; the learner's applied-event
record makes redelivery harmless). A failed publish is retried with the same batch, never skipped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from common.events import FeedbackEvent
from common.settings import KafkaSettings
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner

log = structlog.get_logger()
K = TypeVar("K", AIOKafkaConsumer, AIOKafkaProducer)


async def run(learner: Learner, kafka: KafkaSettings, batch_size: int, max_wait_ms: int, metrics: LearnerMetrics,
              stop: asyncio.Event | None = None) -> None:  # fmt: skip
    assert kafka.bootstrap_servers, "the Kafka learner needs RECSYS_KAFKA__BOOTSTRAP_SERVERS"
    # fetch_max_wait_ms: the broker holds a fetch no longer than a batch may wait (freshness)
    consumer = await _started(lambda: AIOKafkaConsumer(
        kafka.topic, bootstrap_servers=kafka.bootstrap_servers, group_id=kafka.group_id, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=max_wait_ms))  # fmt: skip
    dead = await _started(lambda: AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all"))
    log.info("learner_started", topic=kafka.topic, group=kafka.group_id)
    try:
        while stop is None or not stop.is_set():
            try:
                parts = await consumer.getmany(timeout_ms=max_wait_ms, max_records=batch_size)
            except KafkaError as e:  # broker away: aiokafka reconnects; keep asking
                log.warning("kafka_fetch_failed", error=str(e))
                await asyncio.sleep(1.0)
                continue
            records = [r for batch in parts.values() for r in batch]
            if not records:
                continue
            events = await _decode(records, dead, kafka.dead_letter_topic, metrics)
            await _process_until_published(learner, events, metrics)
            try:
                await consumer.commit()
            except KafkaError as e:  # the batch is published; redelivered events are skipped by id
                log.warning("kafka_commit_failed", error=str(e))
            try:
                metrics.lag.set(await _lag(consumer))
            except Exception as e:  # a metric must never stop the learner (positions move during rebalances)
                log.warning("lag_unavailable", error=str(e))
    finally:
        await consumer.stop()
        await dead.stop()


async def _started(make: Callable[[], K]) -> K:
    """A started Kafka client: a learner started before its broker waits for it instead of exiting
    (a fresh client per attempt; one that failed to bootstrap is not reused)."""
    backoff = 0.5
    while True:
        client = make()
        try:
            await client.start()
            return client
        except KafkaError as e:
            await client.stop()
            log.warning("kafka_unreachable", error=str(e), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)


async def _lag(consumer: AIOKafkaConsumer) -> int:
    lag = 0
    for tp in consumer.assignment():
        lag += max((consumer.highwater(tp) or 0) - await consumer.position(tp), 0)
    return lag


async def _decode(records: list, dead: AIOKafkaProducer, topic: str, metrics: LearnerMetrics) -> list[FeedbackEvent]:  # type: ignore[type-arg]
    events = []
    for r in records:
        try:
            events.append(FeedbackEvent.model_validate_json(r.value))
        except (ValidationError, ValueError, TypeError) as e:
            reason = "invalid" if isinstance(e, ValidationError) else "undecodable"
            headers = [("reason", reason.encode()), ("error", str(e)[:500].encode()),
                       ("source", f"{r.topic}:{r.partition}:{r.offset}".encode())]  # fmt: skip
            await dead.send_and_wait(topic, value=r.value, key=r.key, headers=headers)
            metrics.dead_letters.labels(reason).inc()
            log.warning("dead_lettered", reason=reason, offset=r.offset)
    return events


async def _process_until_published(learner: Learner, events: list[FeedbackEvent], metrics: LearnerMetrics) -> None:
    backoff = 0.2
    while True:
        try:
            await learner.process(events)
            return
        except Exception as e:  # Redis away: the batch stays uncommitted and is retried as a whole
            log.warning("publish_failed_retrying", error=str(e), retry_in_s=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
