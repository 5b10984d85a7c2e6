"""The Kafka side of the learner: consume feedback in micro-batches (size or time, whichever first),
send poison records to the dead-letter topic with the reason, hand the rest to `Learner.process`, and
commit offsets only after the update they fed is published (at-least-once; the learner's applied-event
record makes redelivery harmless).

A batch that fails on a transient error (Redis or Kafka away, a timeout) is retried with the same
events until it goes through, never skipped. One that fails otherwise is a bug, not an outage: after
`max_batch_failures` such failures its events go to the dead-letter topic too (reason
`processing_failed`), its offsets are committed and the partition moves on, as Kafka Streams' and
Faust's error handlers do, instead of one bad batch stalling the partition forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from common.events import FeedbackEvent
from common.settings import KafkaSettings
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner

log = structlog.get_logger()
K = TypeVar("K", AIOKafkaConsumer, AIOKafkaProducer)

# What an outage raises while a batch is processed (the adapter store is Redis): retried for as long as
# it lasts. Anything else is a bug in the batch or the code, and is retried only `max_batch_failures` times.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError,
                                                 TimeoutError)  # fmt: skip
PROCESSING_FAILED = "processing_failed"  # the dead-letter reason (header and metric label) of a given-up batch


def _kafka_transient(e: BaseException) -> bool:
    """aiokafka marks the errors a retry can cure (connection lost, no broker ready, leader moving), all but
    its own client-side timeout."""
    return isinstance(e, KafkaTimeoutError) or (isinstance(e, KafkaError) and bool(e.retriable))


def _log_retry(event: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(event, error=str(error), attempt=state.attempt_number, retry_in_s=state.upcoming_sleep)

    return before_sleep


async def run(learner: Learner, kafka: KafkaSettings, batch_size: int, max_wait_ms: int, metrics: LearnerMetrics,
              stop: asyncio.Event | None = None, max_batch_failures: int = 3,
              on_processed: Callable[[list[FeedbackEvent]], Awaitable[None]] | None = None) -> None:  # fmt: skip
    """`max_batch_failures`: how many times a batch may fail with a non-transient error before its
    events are dead-lettered (1: at the first failure, no retry). `on_processed`: given each learnt
    batch before its offsets are committed (the periodic fine-tune keeps it)."""
    assert kafka.bootstrap_servers, "the Kafka learner needs RECSYS_KAFKA__BOOTSTRAP_SERVERS"
    assert max_batch_failures >= 1, "max_batch_failures counts attempts: at least 1"
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
            except KafkaError as e:  # broker away: aiokafka reconnects; the loop asks again (and checks `stop`)
                log.warning("kafka_fetch_failed", error=str(e))
                await asyncio.sleep(1.0)
                continue
            records = [r for batch in parts.values() for r in batch]
            if not records:
                continue
            decoded = await _decode(records, dead, kafka.dead_letter_topic, metrics)
            events = [e for _, e in decoded]
            error = await _process(learner, events, max_batch_failures)
            if error is None and on_processed is not None:
                await on_processed(events)
            if error is not None:
                await _dead_letter(dead, kafka.dead_letter_topic, [r for r, _ in decoded], PROCESSING_FAILED, error,
                                   metrics)  # fmt: skip
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


@retry(retry=retry_if_exception(_kafka_transient), wait=wait_exponential(multiplier=0.5, max=10.0),
       before_sleep=_log_retry("kafka_unreachable"), reraise=True)  # fmt: skip
async def _started(make: Callable[[], K]) -> K:
    """A started Kafka client: a learner started before its broker waits for it instead of exiting
    (a fresh client per attempt; one that failed to bootstrap is not reused)."""
    client = make()
    try:
        await client.start()
    except KafkaError:
        await client.stop()
        raise
    return client


async def _lag(consumer: AIOKafkaConsumer) -> int:
    lag = 0
    for tp in consumer.assignment():
        lag += max((consumer.highwater(tp) or 0) - await consumer.position(tp), 0)
    return lag


async def _decode(records: list[ConsumerRecord], dead: AIOKafkaProducer, topic: str,
                  metrics: LearnerMetrics) -> list[tuple[ConsumerRecord, FeedbackEvent]]:  # fmt: skip
    """The valid events with their records; the rest go to the dead-letter topic."""
    decoded = []
    for r in records:
        try:
            decoded.append((r, FeedbackEvent.model_validate_json(r.value)))
        except (ValidationError, ValueError, TypeError) as e:
            await _dead_letter(dead, topic, [r], "invalid" if isinstance(e, ValidationError) else "undecodable", e,
                               metrics)  # fmt: skip
    return decoded


@retry(retry=retry_if_exception(_kafka_transient), wait=wait_exponential(multiplier=0.5, max=10.0),
       before_sleep=_log_retry("dead_letter_send_failed_retrying"), reraise=True)  # fmt: skip
async def _dead_letter(dead: AIOKafkaProducer, topic: str, records: Sequence[ConsumerRecord], reason: str,
                       error: BaseException, metrics: LearnerMetrics) -> None:  # fmt: skip
    """The records as they came (value, key), with why and where from in headers. A retry after a partial
    send may write some twice: the dead-letter topic is read by people, and at-least-once is enough."""
    detail = str(error)[:500].encode()
    sent = [await dead.send(topic, value=r.value, key=r.key, headers=[
        ("reason", reason.encode()), ("error", detail), ("source", f"{r.topic}:{r.partition}:{r.offset}".encode()),
    ]) for r in records]  # fmt: skip
    await asyncio.gather(*sent)
    metrics.dead_letters.labels(reason).inc(len(records))
    log.warning("dead_lettered", reason=reason, records=len(records), offset=records[0].offset if records else None,
                error=str(error)[:200])  # fmt: skip


async def _process(learner: Learner, events: Sequence[FeedbackEvent], max_failures: int) -> Exception | None:
    """None once the batch went through; the last error once it failed `max_failures` times on something
    other than an outage (outages are ridden out inside each attempt)."""
    retrying = AsyncRetrying(stop=stop_after_attempt(max_failures), wait=wait_exponential(multiplier=0.2, max=5.0),
                             before_sleep=_log_retry("batch_failed_retrying"), reraise=True)  # fmt: skip
    try:
        await retrying(_process_through_outages, learner, events)
    except Exception as e:  # not transient (those are retried below): give up on this batch, not the partition
        log.error("batch_given_up", events=len(events), attempts=max_failures, error=str(e), exc_info=e)
        return e
    return None


@retry(retry=retry_if_exception_type(TRANSIENT_ERRORS), wait=wait_exponential(multiplier=0.2, max=5.0),
       before_sleep=_log_retry("publish_failed_retrying"), reraise=True)  # fmt: skip
async def _process_through_outages(learner: Learner, events: Sequence[FeedbackEvent]) -> None:
    """Redis away: the batch stays uncommitted and is retried as a whole for as long as the outage lasts."""
    await learner.process(events)
