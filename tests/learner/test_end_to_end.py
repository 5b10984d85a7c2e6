"""Feedback -> learner -> adapter -> /recommend, and the faults around it: the embedded in-process
learner; Kafka (librdkafka's mock cluster) and the real Redis; a corrupt or wrongly signed adapter; a
Redis restart while serving; the learner killed with SIGKILL mid-stream and restarted."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from common.adapter import Manifest, encode, sign
from common.adapter_store import MemoryAdapterStore, RedisAdapterStore
from common.events import FeedbackEvent
from common.settings import AdapterSettings, KafkaSettings
from learner.build import learner_from_settings
from learner.consumer import run as run_learner
from learner.metrics import LearnerMetrics
from learner.settings import GuardSettings, LearnerSettings
from llm4rec.embedded import EmbeddedLearner
from service.settings import Settings
from service.state import app_state
from tests.conftest import REDIS_URL, SmallTrained, serve, until, with_
from tests.kafka_mock import mock_kafka
from tests.net import free_port
from training.checkpoint import checkpoint_version, read_checkpoint_meta

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def _likes(user: str, items: range) -> list[dict[str, object]]:
    return [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": f"m{i}", "type": "like",
             "timestamp": 1_700_000_000 + n} for n, i in enumerate(items)]  # fmt: skip


def _learner_settings(checkpoint: Path, st: SmallTrained, prefix: str, **changes: object) -> LearnerSettings:
    return LearnerSettings(model_dir=checkpoint, cache_dir=st.cache, redis_url=REDIS_URL, items_stream=prefix + "items",  # type: ignore[arg-type]
                           adapter=AdapterSettings(prefix=prefix + "adapter:", signing_key="sign"),  # type: ignore[arg-type]
                           guard=GuardSettings(holdout_every=0), learner_metrics_port=0, **changes)  # fmt: skip


async def _adapter_version(client, user: str = "u1") -> int:  # type: ignore[no-untyped-def]
    r = await client.post("/recommend", json={"user_id": user, "k": 3, "explain": False})
    return int(r.json()["adapter_version"])


async def test_embedded_learner_serves_a_new_adapter_after_feedback(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, prefix: str
) -> None:
    store = MemoryAdapterStore()
    ls = _learner_settings(checkpoint, small_trained, prefix)
    s = with_(settings, redis_url=None, adapter=ls.adapter)
    async with serve(s, store) as (client, app):
        await EmbeddedLearner(app_state(app), ls, store).attach()
        assert await _adapter_version(client) == 0
        r = await client.post("/feedback", json={"events": _likes("u1", range(20, 32))})
        assert r.status_code == 202
        await until(lambda: _adapter_version(client), timeout_s=10)
        assert app_state(app).metrics.registry.get_sample_value("recsys_adapter_swaps_total") >= 1
        exposed = (await client.get("/metrics")).text  # the embedded learner's figures on the service's /metrics
        assert re.search(r"^recsys_learner_published_total [1-9]", exposed, re.MULTILINE)


async def test_feedback_through_kafka_reaches_the_served_adapter(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, prefix: str
) -> None:
    ls = _learner_settings(checkpoint, small_trained, prefix)
    with mock_kafka() as kafka:
        ls.kafka = KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=f"g-{prefix}")
        s = with_(settings, kafka=ls.kafka, adapter=ls.adapter)
        redis = Redis.from_url(REDIS_URL)
        store = RedisAdapterStore(redis, ls.adapter.prefix)
        metrics = LearnerMetrics()
        learner = learner_from_settings(ls, store, metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(run_learner(learner, ls.kafka, 64, 50, metrics, stop))
        try:
            async with serve(s) as (client, _):
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await client.post("/feedback", json={"events": _likes("u1", range(20, 32))})
                await until(lambda: _adapter_version(client), timeout_s=30)
                assert loop.time() - t0 < 30
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await redis.aclose()
        assert metrics.registry.get_sample_value("recsys_learner_published_total") >= 1


async def test_bad_adapters_in_redis_are_refused_and_serving_continues(settings: Settings, prefix: str) -> None:
    a = AdapterSettings(prefix=prefix + "adapter:", signing_key="sign")  # type: ignore[arg-type]
    async with serve(with_(settings, adapter=a)) as (client, app):
        redis = Redis.from_url(REDIS_URL)
        store = RedisAdapterStore(redis, a.prefix)
        watcher = app_state(app).recommender.adapters
        good = watcher.current.tensors()
        good["item_bias"][:] = 0.01
        shapes = {k: list(v.shape) for k, v in good.items()}

        async def publish(version: int, key: bytes, base: str = watcher.base_model, weights: bytes = b"") -> None:
            fields = encode(good, Manifest(version, base, shapes, 1), key)
            if weights:  # corrupt bytes, correctly signed: the parse must catch them
                fields |= {"weights": weights, "signature": sign(key, fields["manifest"], weights).encode()}
            await store.publish(version, fields, [])
            await until(lambda: version in watcher.rejected or watcher.current.version == version, 10)

        await publish(1, b"sign")
        assert await _adapter_version(client) == 1
        await publish(2, b"wrong key")
        await publish(3, b"sign", weights=b"\x00corrupt")
        await publish(4, b"sign", base="another-model")
        bigger = {**good, "item_bias": good["item_bias"].repeat(2)}
        fields = encode(bigger, Manifest(5, watcher.base_model, {k: list(v.shape) for k, v in bigger.items()}, 1),
                        b"sign")  # fmt: skip
        await store.publish(5, fields, [])
        await until(lambda: 5 in watcher.rejected, 10)
        assert await _adapter_version(client) == 1  # still the last good one
        m = app_state(app).metrics.registry
        for reason in ("signature", "corrupt", "base_model", "shape"):
            assert m.get_sample_value("recsys_adapter_rejections_total", {"reason": reason}) == 1
        await publish(6, b"sign")
        assert await _adapter_version(client) == 6
        await redis.aclose()


async def test_a_published_item_correction_is_served_through_the_index(settings: Settings, prefix: str) -> None:
    """The learner's item rows reach retrieval: a version that moves one item onto the user's own vector
    (and raises its popularity) puts it first in that user's next list; the rows that did not move are
    not rewritten."""
    a = AdapterSettings(prefix=prefix + "adapter:", signing_key="sign", poll_s=0.2)  # type: ignore[arg-type]
    async with serve(with_(settings, adapter=a)) as (client, app):
        state = app_state(app)
        watcher, cat = state.recommender.adapters, state.recommender.c.catalogue
        first = await client.post("/recommend", json={"user_id": "u1", "k": 10, "explain": False})
        listed = {it["item_id"] for it in first.json()["items"]}
        history = [cat.item_index[i] for i, _ in await state.history.recent("u1", 200)]
        target = next(i for i in range(40) if cat.data.item_ids[i] not in listed and i not in history)
        user = state.recommender.c.model.encode([history])[0].numpy()
        moved = 2 * np.linalg.norm(cat.vectors[:, :-1], axis=1).max() * user / np.linalg.norm(user)
        tensors = watcher.current.tensors()
        tensors["item_delta"][target] = moved - cat.vectors[target, :-1]
        tensors["log_pop"][target] += 1.0
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        redis = Redis.from_url(REDIS_URL)
        await RedisAdapterStore(redis, a.prefix).publish(1, encode(tensors, Manifest(1, watcher.base_model, shapes, 1),
                                                                   b"sign"), [])  # fmt: skip
        await redis.aclose()
        await until(lambda: watcher.current.version == 1, 10)
        r = await client.post("/recommend", json={"user_id": "u1", "k": 10, "explain": False})
        assert r.json()["items"][0]["item_id"] == f"m{target}"
        assert state.metrics.registry.get_sample_value("recsys_items_corrected_total") == 1
        np.testing.assert_allclose(cat.served[target, :-1], moved, rtol=1e-5, atol=1e-5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """A private redis-server that a test may kill and start again on the same port."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)  # fmt: skip
        procs.append(p)
        return p

    start.port = port  # type: ignore[attr-defined]
    yield start
    for p in procs:
        p.kill()
        p.wait()


async def test_a_redis_restart_keeps_the_last_adapter_and_reconnects(settings: Settings, own_redis) -> None:  # type: ignore[no-untyped-def]
    proc = own_redis()
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    await until(lambda: _pings(url))
    a = AdapterSettings(signing_key="sign", poll_s=0.2)  # type: ignore[arg-type]
    async with serve(with_(settings, redis_url=url, adapter=a)) as (client, app):
        watcher = app_state(app).recommender.adapters
        tensors = watcher.current.tensors()
        shapes = {k: list(v.shape) for k, v in tensors.items()}

        async def publish(version: int) -> None:
            redis = Redis.from_url(url)
            manifest = Manifest(version, watcher.base_model, shapes, 1)
            await RedisAdapterStore(redis).publish(version, encode(tensors, manifest, b"sign"), [])
            await redis.aclose()

        await publish(1)
        await until(lambda: watcher.current.version == 1)
        proc.kill()
        proc.wait()
        r = await client.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})
        assert r.status_code == 200
        assert r.json()["adapter_version"] == 1  # the last good adapter keeps serving
        assert r.json()["degraded"] is True  # history lives in the Redis that is down
        own_redis()
        await until(lambda: _pings(url))
        await publish(2)
        await until(lambda: watcher.current.version == 2, timeout_s=15)
        assert (await client.post("/recommend", json={"user_id": "u1", "k": 3})).json()["adapter_version"] == 2


async def _pings(url: str) -> bool:
    redis = Redis.from_url(url)
    try:
        return bool(await redis.ping())
    except Exception:
        return False
    finally:
        await redis.aclose()


async def test_a_learner_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    checkpoint: Path, small_trained: SmallTrained, prefix: str, tmp_path: Path
) -> None:
    n = 1500
    events = [FeedbackEvent(user_id=f"u{i % 60}", item_id=f"m{(i * 7) % 40}", type="click",  # type: ignore[arg-type]
                            timestamp=1_700_000_000 + i) for i in range(n)]  # fmt: skip
    with mock_kafka() as kafka:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        for e in events:
            await producer.send("recsys.feedback", e.model_dump_json().encode(), key=e.user_id.encode())
        await producer.flush()
        await producer.stop()
        env = {**os.environ, "RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
               "RECSYS_REDIS_URL": REDIS_URL, "RECSYS_ADAPTER__PREFIX": prefix + "adapter:",
               "RECSYS_ITEMS_STREAM": prefix + "items",
               "RECSYS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RECSYS_KAFKA__GROUP_ID": f"g-{prefix}",
               "RECSYS_BATCH__SIZE": "50", "RECSYS_GUARD__HOLDOUT_EVERY": "0",
               "RECSYS_STATE_DIR": str(tmp_path / "state"), "RECSYS_MODEL_KEY": prefix + "model",
               "RECSYS_LEARNER_METRICS_PORT": "0"}  # fmt: skip
        redis = Redis.from_url(REDIS_URL)
        store = RedisAdapterStore(redis, prefix + "adapter:")
        first = subprocess.Popen([sys.executable, "-m", "learner"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            await until(lambda: _applied_at_least(store, 300), timeout_s=120)
            os.kill(first.pid, signal.SIGKILL)  # mid-stream: batches applied, offsets maybe not committed
            first.wait()
            killed_at = len(await store.audit_log())
            assert killed_at < n
            second = subprocess.Popen([sys.executable, "-m", "learner"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
            try:
                await until(lambda: _applied_at_least(store, n), timeout_s=180)
                await asyncio.sleep(1.0)  # anything applied twice would show up now
            finally:
                second.kill()
                second.wait()
            log = await store.audit_log()
        finally:
            first.kill()
            await redis.aclose()
    assert len(log) == len(set(log)) == n  # every event applied, none twice
    assert set(log) == {e.event_id for e in events}


async def _applied_at_least(store: RedisAdapterStore, n: int) -> bool:
    return len(await store.audit_log()) >= n


async def test_the_kafka_learner_fine_tunes_and_every_replica_follows(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, prefix: str, tmp_path: Path
) -> None:
    """With Kafka and Redis: the learner fine-tunes the shared model folder's checkpoint after enough
    feedback, names the new version in Redis, and the service swaps it in from the folder."""
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    old = checkpoint_version(model)
    with mock_kafka() as kafka:
        ls = _learner_settings(model, small_trained, prefix)
        ls.kafka = KafkaSettings(bootstrap_servers=kafka.bootstrap, group_id=f"g-{prefix}")
        env = {**os.environ, "RECSYS_MODEL_DIR": str(model), "RECSYS_CACHE_DIR": str(small_trained.cache),
               "RECSYS_REDIS_URL": REDIS_URL, "RECSYS_ADAPTER__PREFIX": ls.adapter.prefix,
               "RECSYS_ADAPTER__SIGNING_KEY": "sign", "RECSYS_ITEMS_STREAM": prefix + "items",
               "RECSYS_HISTORY_PREFIX": settings.history_prefix, "RECSYS_MODEL_KEY": prefix + "model",
               "RECSYS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RECSYS_KAFKA__GROUP_ID": f"g-{prefix}",
               "RECSYS_STATE_DIR": str(tmp_path / "learner-state"), "RECSYS_INDEX__LOCATION": settings.index.location,
               "RECSYS_FINE_TUNE__EVERY_EVENTS": "12", "RECSYS_FINE_TUNE__MIN_INTERVAL_S": "0",
               "RECSYS_LEARNER_METRICS_PORT": "0"}  # fmt: skip
        learner = subprocess.Popen([sys.executable, "-m", "learner"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        redis = Redis.from_url(REDIS_URL)
        try:
            s = with_(settings, model_dir=model, kafka=ls.kafka, adapter=ls.adapter, model_key=prefix + "model")
            async with serve(s) as (client, app):
                r = await client.post("/feedback", json={"events": _likes("u1", range(20, 32))})
                assert r.status_code == 202
                state = app_state(app)
                await until(lambda: state.recommender.c.model_version != old, timeout_s=180)
                new = state.recommender.c.model_version
                assert new == checkpoint_version(model) == (await redis.get(prefix + "model")).decode()
                assert read_checkpoint_meta(model)["fine_tune"]["events"] == 12
                r = await client.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})
                assert r.json()["model_version"] == new
        finally:
            learner.terminate()
            learner.wait(30)
            await redis.aclose()
