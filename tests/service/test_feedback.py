"""POST /feedback, POST /items, limits, keys and metrics, through the real app: history in the real
Redis, events through the in-process sink or Kafka (librdkafka's mock cluster in a child process)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from httpx import AsyncClient
from pydantic import SecretStr

from common.events import FeedbackEvent
from common.settings import KafkaSettings
from service.feedback import MemoryDeduper
from service.settings import ApiSettings, Settings
from service.spool import Spool
from service.state import app_state
from tests.conftest import serve, with_
from tests.kafka_mock import mock_kafka, read_topic

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _likes(user: str, items: range, t0: int = 1_700_000_000) -> list[dict[str, object]]:
    return [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": f"m{i}", "type": "like",
             "timestamp": t0 + n} for n, i in enumerate(items)]  # fmt: skip


async def _genres(client: AsyncClient, user: str, genre: str) -> int:
    r = await client.post("/recommend", json={"user_id": user, "k": 5, "explain": False})
    return sum(genre in it["categories"] for it in r.json()["items"])


async def test_feedback_changes_the_users_next_recommendations(client: AsyncClient) -> None:
    assert await _genres(client, "u1", "Sci-Fi") >= 4  # u1 watches space films
    r = await client.post("/feedback", json={"events": _likes("u1", range(20, 32))})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 12, "duplicates": 0, "published": True}
    assert await _genres(client, "u1", "Romance") >= 4


async def test_duplicate_event_ids_are_accepted_once(settings: Settings) -> None:
    async with serve(settings) as (client, app):
        delivered: list[FeedbackEvent] = []

        async def collect(events: list[FeedbackEvent]) -> None:
            delivered.extend(events)

        app_state(app).sink.subscribers.append(collect)
        events = _likes("u3", range(5))
        first = await client.post("/feedback", json={"events": [*events, events[0]]})  # repeated inside too
        again = await client.post("/feedback", json={"events": events[:3]})
        assert first.json() == {"accepted": 5, "duplicates": 1, "published": True}
        assert again.json() == {"accepted": 0, "duplicates": 3, "published": True}
        assert sorted(e.event_id for e in delivered) == sorted(e["event_id"] for e in events)
        no_id = await client.post("/feedback", json={"events": [{"user_id": "u3", "item_id": "m1", "type": "view"}]})
        assert no_id.json()["accepted"] == 1
        assert delivered[-1].timestamp > 0  # stamped with the receive time


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "u1", "item_id": "m1", "type": "love"}, "type"),
        ({"item_id": "m1", "type": "view"}, "user_id"),
        ({"user_id": " u1", "item_id": "m1", "type": "view"}, "user_id"),
        ({"user_id": "u1", "item_id": "m1", "type": "rating", "value": "five"}, "value"),
        ({"user_id": "u1", "item_id": "m1", "type": "view", "timestamp": 10**13}, "timestamp"),
        ({"user_id": "u1", "item_id": "m1", "type": "view", "extra": 1}, "extra"),
    ],
)
async def test_invalid_events_get_422_naming_the_field_and_nothing_is_kept(
    client: AsyncClient, event: dict[str, object], field: str
) -> None:
    good = {"user_id": "u1", "item_id": "m2", "type": "view"}
    r = await client.post("/feedback", json={"events": [good, event]})
    assert r.status_code == 422
    assert field in r.json()["detail"]["field"].split(".")
    ready = (await client.get("/readyz")).json()
    assert ready["dependencies"]["events"] == "in-process ok, 0 spooled"
    assert (await client.post("/feedback", json={"events": []})).status_code == 422
    many = [good] * 1001
    assert (await client.post("/feedback", json={"events": many})).status_code == 422


async def test_oversized_bodies_get_413(settings: Settings) -> None:
    async with serve(with_(settings, api=ApiSettings(max_body_bytes=2048))) as (client, _):
        r = await client.post("/feedback", json={"events": _likes("u1", range(40))})
        assert r.status_code == 413
        assert r.json()["detail"]["field"] == "body"
        assert "x-request-id" in r.headers

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while streaming
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post("/feedback", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


async def test_write_endpoints_need_the_api_key(settings: Settings) -> None:
    async with serve(with_(settings, api=ApiSettings(key=SecretStr("s3cret")))) as (client, _):
        body = {"events": _likes("u1", range(1))}
        assert (await client.post("/feedback", json=body)).status_code == 401
        wrong = await client.post("/feedback", json=body, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"]["field"] == "X-API-Key"
        assert (await client.post("/feedback", json=body, headers={"X-API-Key": "s3cret"})).status_code == 202
        item = {"items": [{"item_id": "n1", "title": "Some film"}]}
        assert (await client.post("/items", json=item)).status_code == 401
        assert (await client.post("/recommend", json={"user_id": "u1"})).status_code == 200  # reads stay open
        assert "s3cret" not in (await client.get("/readyz")).text


async def test_new_items_are_served_from_content_alone(client: AsyncClient) -> None:
    new = {"items": [{"item_id": "new-robots", "title": "The robots story part 9", "categories": ["Sci-Fi", "Action"],
                      "year": 2030}]}  # fmt: skip
    r = await client.post("/items", json=new)
    assert r.json() == {"added": ["new-robots"], "existing": []}
    assert (await client.post("/items", json=new)).json() == {"added": [], "existing": ["new-robots"]}
    assert (await client.get("/items/new-robots")).json()["categories"] == ["Sci-Fi", "Action"]

    async def ranks(user: str) -> tuple[int, list[int]]:
        """The new item's rank and the ranks of the romances in the user's list."""
        items = (await client.post("/recommend", json={"user_id": user, "k": 100})).json()["items"]
        new = next(it["rank"] for it in items if it["item_id"] == "new-robots")
        return new, [it["rank"] for it in items if "Romance" in it["categories"]]

    new, romances = await ranks("u1")  # the space fan: the new space film comes before every romance
    assert new < min(romances)
    new, romances = await ranks("u2")  # the romance fan: after every unseen romance
    assert new > max(romances)


async def test_metrics_export_requests_stages_and_feedback(client: AsyncClient) -> None:
    await client.post("/recommend", json={"user_id": "u1", "k": 3})
    await client.post("/recommend", json={"user_id": "nobody", "k": 3})
    await client.post("/feedback", json={"events": _likes("u1", range(2))})
    await client.post("/recommend", json={"user_id": "u1", "k": 0})
    text = (await client.get("/metrics")).text
    assert 'recsys_http_requests_total{endpoint="/recommend",method="POST",status="200"} 2.0' in text
    assert 'recsys_http_requests_total{endpoint="/recommend",method="POST",status="422"} 1.0' in text
    for stage in ("history", "user_encoding", "retrieval", "rerank", "explanation"):
        assert f'recsys_recommend_stage_duration_seconds_count{{stage="{stage}"}} 2.0' in text
    assert "recsys_feedback_accepted_total 2.0" in text
    assert "recsys_feedback_published_total 2.0" in text
    assert "recsys_cold_start_total 1.0" in text


async def test_redis_down_degrades_answers_and_keeps_feedback(settings: Settings) -> None:
    async with serve(with_(settings, redis_url="redis://127.0.0.1:1/0")) as (client, _):
        r = await client.post("/recommend", json={"user_id": "u1", "k": 3})
        assert r.status_code == 200
        assert r.json()["degraded"] is True
        assert r.json()["cold_start"] is True
        fb = await client.post("/feedback", json={"events": _likes("u1", range(2))})
        assert fb.status_code == 202
        assert fb.json()["accepted"] == 2
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["dependencies"]["history"] == "unreachable"


async def test_feedback_reaches_kafka_keyed_by_user(settings: Settings) -> None:
    with mock_kafka() as kafka:
        async with serve(with_(settings, kafka=KafkaSettings(bootstrap_servers=kafka.bootstrap))) as (client, _):
            events = _likes("u5", range(3)) + _likes("u6", range(3, 5))
            r = await client.post("/feedback", json={"events": events})
            assert r.json() == {"accepted": 5, "duplicates": 0, "published": True}
            records = await read_topic(kafka.bootstrap, settings.kafka.topic, 5)
    got = {FeedbackEvent.model_validate_json(v).event_id: k.decode() for k, v in records}
    assert got == {e["event_id"]: e["user_id"] for e in events}


async def test_kafka_outage_during_a_burst_loses_and_duplicates_nothing(settings: Settings) -> None:
    s = with_(settings, kafka=KafkaSettings(bootstrap_servers="", request_timeout_ms=30_000))
    s.feedback.ack_wait_s = 0.2
    with mock_kafka() as kafka:
        s.kafka.bootstrap_servers = kafka.bootstrap
        async with serve(s) as (client, app):
            accepted: list[str] = []
            published_flags = []
            for n in range(30):
                if n == 10:
                    kafka.freeze()  # the broker stops answering mid-burst
                if n == 20:
                    kafka.thaw()
                batch = _likes(f"u{n % 7}", range(n % 40, n % 40 + 3))
                r = await client.post("/feedback", json={"events": batch})
                assert r.status_code == 202
                accepted += [e["event_id"] for e in batch]
                published_flags.append(r.json()["published"])
            assert not all(published_flags[10:20])  # answered from the spool while Kafka was frozen
            await until(lambda: app_state(app).forwarder.spool.pending == 0, timeout_s=60)
            metrics = (await client.get("/metrics")).text
        records = await read_topic(kafka.bootstrap, s.kafka.topic, len(accepted))
    ids = [FeedbackEvent.model_validate_json(v).event_id for _, v in records]
    assert len(ids) == len(accepted)  # none twice
    assert set(ids) == set(accepted)  # none lost
    assert "recsys_feedback_spooled_total 0.0" not in metrics


async def test_spooled_events_are_replayed_in_order_after_a_restart(settings: Settings) -> None:
    s = with_(settings, kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1_000))
    s.feedback.ack_wait_s = 0.0
    events = _likes("u9", range(6))
    async with serve(s) as (client, app):  # Kafka unreachable from the start
        r = await client.post("/feedback", json={"events": events})
        assert r.json() == {"accepted": 6, "duplicates": 0, "published": False}
        await until(lambda: not app_state(app).forwarder.healthy)
        assert "kafka unreachable, 6 spooled" in (await client.get("/readyz")).json()["dependencies"]["events"]
    with mock_kafka() as kafka:
        s.kafka.bootstrap_servers = kafka.bootstrap
        async with serve(s) as (client, app):  # the same spool folder, Kafka back
            await until(lambda: app_state(app).forwarder.spool.pending == 0)
            assert "recsys_feedback_replayed_total 6.0" in (await client.get("/metrics")).text
        records = await read_topic(kafka.bootstrap, s.kafka.topic, 6)
    assert [FeedbackEvent.model_validate_json(v).event_id for _, v in records] == [e["event_id"] for e in events]


async def test_added_items_survive_a_restart(settings: Settings) -> None:
    new = {"items": [{"item_id": "kept-1", "title": "The galaxy story part 9", "categories": ["Sci-Fi"]}]}
    async with serve(settings) as (client, _):
        assert (await client.post("/items", json=new)).json()["added"] == ["kept-1"]
    async with serve(settings) as (client, _):  # same index folder and log: the model gets the row back
        assert (await client.get("/items/kept-1")).status_code == 200
        items = (await client.post("/recommend", json={"user_id": "u1", "k": 100, "explain": True})).json()["items"]
        assert "kept-1" in [it["item_id"] for it in items]


async def test_the_memory_deduper_forgets_the_least_recently_seen_ids_beyond_its_capacity() -> None:
    d = MemoryDeduper(capacity=3)
    assert await d.claim(["a", "b", "c"]) == [True, True, True]
    assert await d.claim(["a"]) == [False]  # a duplicate counts as a sighting: "b" is now the oldest
    assert await d.claim(["d"]) == [True]
    assert await d.claim(["b", "a", "c"]) == [True, False, True]  # "b" was forgotten, then "c" made room
    await d.release(["a"])
    assert await d.claim(["a"]) == [True]


@pytest.mark.parametrize("history", ["redis", "memory"])
async def test_disliked_items_leave_the_next_list_at_once(settings: Settings, history: str) -> None:
    """Five dislikes of the top five items (and a low rating): none of them in the very next list."""
    s = settings if history == "redis" else with_(settings, redis_url=None)
    async with serve(s) as (client, _):
        first = (await client.post("/recommend", json={"user_id": "u1", "k": 10, "explain": False})).json()["items"]
        top = [it["item_id"] for it in first[:6]]
        events = [{"user_id": "u1", "item_id": i, "type": "dislike"} for i in top[:5]]
        events.append({"user_id": "u1", "item_id": top[5], "type": "rating", "value": 1})
        assert (await client.post("/feedback", json={"events": events})).status_code == 202
        body = {"user_id": "u1", "k": 10, "explain": False, "exclude_seen": False}
        after = (await client.post("/recommend", json=body)).json()["items"]
        assert not set(top) & {it["item_id"] for it in after}
        assert len(after) == 10


async def test_a_spooled_event_accepted_under_older_rules_is_forwarded_not_stuck(settings: Settings) -> None:
    """An upgrade that tightens validation must not stop the forwarder on a line already spooled."""
    old = b'{"event_id": "e-old", "user_id": "u1", "item_id": "m3", "type": "rating", "value": 7.0, "timestamp": 1}'
    Spool(settings.feedback.spool_dir).append([old])
    async with serve(settings) as (client, app):
        got: list[FeedbackEvent] = []

        async def collect(events: list[FeedbackEvent]) -> None:
            got.extend(events)

        app_state(app).sink.subscribers.append(collect)  # type: ignore[attr-defined]
        event = {"user_id": "u2", "item_id": "m4", "type": "click"}
        assert (await client.post("/feedback", json={"events": [event]})).json()["published"] is True
        assert app_state(app).forwarder.spool.pending == 0  # the old line went out first, the new one after it
        assert [e.item_id for e in got] == ["m4"]  # learnt: only what today's rules accept


@pytest.mark.parametrize("on_disk", [True, False])
async def test_readyz_says_whether_histories_without_redis_survive_a_restart(settings: Settings,
                                                                              on_disk: bool) -> None:  # fmt: skip
    s = with_(settings, redis_url=None, state_dir=settings.state_dir if on_disk else None)
    async with serve(s, context=False) as (client, _):
        history = (await client.get("/readyz")).json()["dependencies"]["history"]
    assert history == (f"on disk ({settings.state_dir})" if on_disk else "memory (lost on restart)")
