"""The Kafka consumer's failure handling, against librdkafka's mock cluster and the real Redis: a batch
that keeps failing on a bug is dead-lettered after `max_batch_failures` attempts and the partition moves
on; a batch that fails on an outage is retried until it goes through and never dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common.adapter_store import RedisAdapterStore
from common.events import DEAD_LETTER_TOPIC, FEEDBACK_TOPIC, FeedbackEvent
from common.settings import AdapterSettings, KafkaSettings
from learner.build import learner_from_settings
from learner.consumer import PROCESSING_FAILED
from learner.consumer import run as run_learner
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner, Outcome
from learner.settings import GuardSettings, LearnerSettings
from tests.conftest import REDIS_URL, SmallTrained, until
from tests.kafka_mock import mock_kafka

pytestmark = pytest.mark.anyio


def _likes(n: int, tag: str = "") -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=f"{tag}{uuid.uuid4().hex}", user_id=f"u{i % 7}", item_id=f"m{20 + i % 20}",  # type: ignore[arg-type]
                          type="like", timestamp=1_700_000_000 + i) for i in range(n)]  # fmt: skip


@dataclass
class Running:
    bootstrap: str
    group: str
    learner: Learner
    store: RedisAdapterStore
    metrics: LearnerMetrics

    async def produce(self, events: Sequence[FeedbackEvent]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            for e in events:
                await producer.send(FEEDBACK_TOPIC, e.model_dump_json().encode(), key=e.user_id.encode())
            await producer.flush()
        finally:
            await producer.stop()

    async def applied(self) -> set[str]:
        return set(await self.store.audit_log())

    async def has_applied(self, events: Sequence[FeedbackEvent]) -> bool:
        return {e.event_id for e in events} <= await self.applied()

    def dead_lettered(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("recsys_learner_dead_letters_total", {"reason": reason}) or 0.0


@asynccontextmanager
async def learner_on_kafka(checkpoint: Path, st: SmallTrained, prefix: str, max_batch_failures: int,
                           wrap: Callable[[Learner], None]) -> AsyncIterator[Running]:  # fmt: skip
    """A real learner (Redis adapter store) consuming the mock cluster, its `process` wrapped by `wrap`."""
    settings = LearnerSettings(model_dir=checkpoint, cache_dir=st.cache, redis_url=REDIS_URL,  # type: ignore[arg-type]
                               adapter=AdapterSettings(prefix=prefix + "adapter:", signing_key="sign"),  # type: ignore[arg-type]
                               guard=GuardSettings(holdout_every=0), learner_metrics_port=0)  # fmt: skip
    with mock_kafka() as kafka:
        kafka_settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=f"g-{prefix}")
        redis = Redis.from_url(REDIS_URL)
        store = RedisAdapterStore(redis, settings.adapter.prefix)
        metrics = LearnerMetrics()
        learner = learner_from_settings(settings, store, metrics)
        wrap(learner)
        stop = asyncio.Event()
        task = asyncio.create_task(run_learner(learner, kafka_settings, 64, 50, metrics, stop,
                                               max_batch_failures=max_batch_failures))  # fmt: skip
        try:
            yield Running(kafka.bootstrap, kafka_settings.group_id, learner, store, metrics)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await redis.aclose()


async def _read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    """Every record of the topic (with headers), once `expect` have arrived and a short wait found no more."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list[ConsumerRecord] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and len(out) < expect:
            for records in (await c.getmany(timeout_ms=200)).values():
                out.extend(records)
        for records in (await c.getmany(timeout_ms=500)).values():
            out.extend(records)
    finally:
        await c.stop()
    return out


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offsets on the topic, summed over its partitions."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        partitions = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return sum([await c.committed(TopicPartition(topic, p)) or 0 for p in partitions])
    finally:
        await c.stop()


async def _committed_all(r: Running, n: int) -> bool:
    return await _committed(r.bootstrap, r.group, FEEDBACK_TOPIC) == n


async def test_a_batch_that_keeps_failing_is_dead_lettered_and_later_batches_are_learnt(
    checkpoint: Path, small_trained: SmallTrained, prefix: str
) -> None:
    attempts: Counter[tuple[str, ...]] = Counter()

    def buggy_for_bad_events(learner: Learner) -> None:
        real = learner.process

        async def process(events: Sequence[FeedbackEvent]) -> Outcome:
            if any(e.event_id.startswith("bad-") for e in events):
                attempts[tuple(e.event_id for e in events)] += 1
                raise ValueError("a bug that this batch triggers every time")
            return await real(events)

        learner.process = process  # type: ignore[method-assign]

    before, bad, after = _likes(12), _likes(3, "bad-"), _likes(12)
    async with learner_on_kafka(checkpoint, small_trained, prefix, 2, buggy_for_bad_events) as r:
        await r.produce(before)
        await until(lambda: r.has_applied(before))
        await r.produce(bad)
        dead = await _read_all(r.bootstrap, DEAD_LETTER_TOPIC, expect=len(bad))
        await r.produce(after)
        await until(lambda: r.has_applied(after))
        assert r.dead_lettered(PROCESSING_FAILED) == len(bad)
        # nothing lost, nothing of the bad batch applied, and the group's offsets move past all of it
        assert await r.applied() == {e.event_id for e in before + after}
        await until(lambda: _committed_all(r, len(before) + len(bad) + len(after)), timeout_s=10)
    # each batch that held the bad events was tried exactly max_batch_failures times, then given up
    assert set(attempts.values()) == {2}
    assert sorted(FeedbackEvent.model_validate_json(d.value).event_id for d in dead) == sorted(e.event_id for e in bad)
    for d in dead:
        headers = dict(d.headers)
        assert headers["reason"] == PROCESSING_FAILED.encode()
        assert b"a bug that this batch triggers" in headers["error"]
        assert headers["source"].startswith(FEEDBACK_TOPIC.encode() + b":")


async def test_a_batch_that_fails_on_an_outage_is_retried_until_learnt_not_dead_lettered(
    checkpoint: Path, small_trained: SmallTrained, prefix: str
) -> None:
    calls = Counter[str]()

    def redis_away_three_times(learner: Learner) -> None:
        real = learner.process

        async def process(events: Sequence[FeedbackEvent]) -> Outcome:
            calls["process"] += 1
            if calls["process"] <= 3:  # more failures than max_batch_failures: outages are not counted
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            return await real(events)

        learner.process = process  # type: ignore[method-assign]

    events = _likes(12)
    async with learner_on_kafka(checkpoint, small_trained, prefix, 2, redis_away_three_times) as r:
        await r.produce(events)
        await until(lambda: r.has_applied(events))
        assert await r.applied() == {e.event_id for e in events}
        await until(lambda: _committed_all(r, len(events)), timeout_s=10)
        assert r.dead_lettered(PROCESSING_FAILED) == 0
    assert calls["process"] >= 4
