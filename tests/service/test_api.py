"""API tests through httpx against the real app (lifespan included): a trained checkpoint, the real
Qdrant Edge index built at startup, RAG context, and history in the real Redis."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from common.events import window_fingerprint
from retrieval.history import RedisHistoryStore
from service import components
from service.settings import Settings
from service.state import app_state
from tests.conftest import REDIS_URL, SmallTrained, serve, until, with_

pytestmark = pytest.mark.anyio


async def test_recommend_known_user_with_explanations(client: AsyncClient, small_trained: SmallTrained) -> None:
    r = await client.post("/recommend", json={"user_id": "u1", "k": 5}, headers={"X-Request-ID": "abc-1"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-ID"] == "abc-1"
    body = r.json()
    assert body["cold_start"] is False
    assert len(body["model_version"]) == 12
    items = body["items"]
    assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    data = small_trained.data
    seen = {data.item_ids[i] for i in data.interactions.item[data.interactions.user == 1]}
    assert not seen & {it["item_id"] for it in items}
    for it in items:
        e = it["explanation"]
        assert e["type"] in {"preference", "similarity", "context"}
        assert e["type"] == max(e["weights"], key=e["weights"].get)  # eq. 25
        assert e["evidence"]
        assert it["title"] in e["text"]
    # u1 watches space films (Sci-Fi, Action): the top items follow
    assert sum("Sci-Fi" in it["categories"] for it in items) >= 4


async def test_new_history_changes_the_next_recommendations(client: AsyncClient, prefix: str) -> None:
    before = (await client.post("/recommend", json={"user_id": "u1", "k": 5, "explain": False})).json()["items"]
    assert sum("Sci-Fi" in it["categories"] for it in before) >= 4
    # the space fan binges romances (what POST /feedback will append)
    redis = Redis.from_url(REDIS_URL)
    await RedisHistoryStore(redis, prefix + "history:").append(
        "u1", [(f"m{i}", 1_700_000_000 + i) for i in range(20, 32)]
    )
    await redis.aclose()
    after = (await client.post("/recommend", json={"user_id": "u1", "k": 5, "explain": False})).json()["items"]
    assert sum("Romance" in it["categories"] for it in after) >= 4


async def test_user_vector_cache_keeps_one_entry_per_user(settings: Settings, prefix: str) -> None:
    """The cache follows each user's newest history (re-encoded at every event here): events must not
    leave stale entries behind."""
    redis = Redis.from_url(REDIS_URL)
    async with serve(with_(settings, user_refresh_every=1)) as (client, app):
        for i in range(3):
            await RedisHistoryStore(redis, prefix + "history:").append("u1", [(f"m{20 + i}", 1_700_000_000 + i)])
            r = await client.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})
            assert r.status_code == 200
        cache = app_state(app).recommender.users._cache
        assert list(cache) == ["u1"]
        assert (
            cache["u1"][0][-1] == app_state(app).recommender.c.catalogue.item_index["m22"]
        )  # the newest history's vector
    await redis.aclose()


async def test_unknown_user_gets_a_cold_start_list(client: AsyncClient) -> None:
    r = await client.post("/recommend", json={"user_id": "newcomer", "k": 3})
    assert r.status_code == 200
    assert r.json()["cold_start"] is True
    assert len(r.json()["items"]) == 3


async def test_gamma_and_diversity_change_the_list(client: AsyncClient, small_trained: SmallTrained) -> None:
    pop = small_trained.train.popularity()
    index = {x: i for i, x in enumerate(small_trained.data.item_ids)}

    async def mean_pop(gamma: float) -> float:
        body = {"user_id": "u2", "k": 3, "explain": False, "debias": {"gamma": gamma}}
        items = (await client.post("/recommend", json=body)).json()["items"]
        return float(np.mean([pop[index[it["item_id"]]] for it in items]))

    assert await mean_pop(5.0) > await mean_pop(-5.0)
    plain = (await client.post("/recommend", json={"user_id": "u2", "k": 5, "explain": False})).json()["items"]
    diverse = await client.post("/recommend", json={"user_id": "u2", "k": 5, "explain": False,
                                                    "diversity": {"lambda": 0.9}})  # fmt: skip
    assert diverse.status_code == 200
    assert [it["item_id"] for it in diverse.json()["items"]] != [it["item_id"] for it in plain]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "u1", "k": 0}, "k"),
        ({"user_id": "u1", "k": 101}, "k"),
        ({"user_id": "bad\nid"}, "user_id"),
        ({"user_id": "u1", "surprise": 1}, "surprise"),
        ({"user_id": "u1", "context": {"timestamp": 10**12}}, "timestamp"),
        ({"k": 5}, "user_id"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(
    client: AsyncClient, body: dict[str, object], field: str
) -> None:
    r = await client.post("/recommend", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert field in detail["field"].split(".")
    assert detail["reason"]


async def test_items_health_and_readiness(client: AsyncClient) -> None:
    r = await client.get("/items/m3")
    assert r.status_code == 200
    assert r.json()["title"] == "The alien story part 0"
    missing = await client.get("/items/nope")
    assert missing.status_code == 404
    assert missing.json()["detail"]["field"] == "item_id"
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["dependencies"] == {
        "model": "trained",
        "index": "40 items",
        "history": "redis ok",
        "events": "in-process ok, 0 spooled",
        "explainer": "template",
        "context": "ready",
        "adapter": "version 0",
    }


async def test_a_missing_rag_context_is_embedded_after_startup_not_before(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart whose context collection is gone serves at once and embeds the context meanwhile (on
    ml-latest-small that is minutes); the next start opens the collection it left."""
    release = threading.Event()
    build = components.build_context_index

    def slow_build(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return build(*args, **kwargs)

    monkeypatch.setattr(components, "build_context_index", slow_build)
    async with serve(settings, context=False) as (client, app):
        ready = (await client.get("/readyz")).json()
        assert (ready["dependencies"]["context"], ready["building"]) == ("off", "embedding RAG context")
        r = await client.post("/recommend", json={"user_id": "u1", "k": 5})
        assert r.status_code == 200
        assert {it["explanation"]["type"] for it in r.json()["items"]} <= {"preference", "similarity"}
        release.set()
        # the build is over once its stage is cleared, a step after the context is swapped in
        await until(lambda: not app_state(app).serving.building)
        ready = (await client.get("/readyz")).json()
        assert (ready["dependencies"]["context"], ready["building"]) == ("ready", None)
    monkeypatch.setattr(components, "build_context_index", None)  # a second build would fail the start
    async with serve(settings, context=False) as (client, app):
        assert app_state(app).recommender.c.context is not None
        assert (await client.get("/readyz")).json()["dependencies"]["context"] == "ready"


async def test_a_later_positive_event_on_a_served_item_counts_its_list_as_hit(settings: Settings) -> None:
    async with serve(settings) as (client, app):
        metrics = app_state(app).metrics.registry
        first = (await client.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})).json()
        other = (await client.post("/recommend", json={"user_id": "u3", "k": 3, "explain": False})).json()
        labels = {"model": first["model_version"], "adapter": "off"}
        assert metrics.get_sample_value("recsys_served_lists_total", labels) == 2
        events = [  # joined by request id; a second hit on the same list; a dislike; another user's item
            {"user_id": "u1", "item_id": first["items"][0]["item_id"], "type": "click",
             "request_id": first["request_id"]},
            {"user_id": "u1", "item_id": first["items"][1]["item_id"], "type": "like"},
            {"user_id": "u3", "item_id": other["items"][0]["item_id"], "type": "dislike"},
            {"user_id": "u3", "item_id": "m39" if "m39" not in {i["item_id"] for i in other["items"]} else "m38",
             "type": "click"},
        ]  # fmt: skip
        assert (await client.post("/feedback", json={"events": events})).status_code == 202
        assert metrics.get_sample_value("recsys_served_list_hits_total", labels) == 1


async def test_feedback_carries_the_user_vector_last_served_and_refuses_one_from_a_client(
    settings: Settings,
) -> None:
    """Events reach the learner with the vector the service served their user from (`ServedUser`: model,
    window fingerprint, the vector itself); a client cannot send one."""
    async with serve(settings) as (client, app):
        rec = app_state(app).recommender
        ingested: list[Any] = []
        ingest = app_state(app).feedback.ingest

        async def capture(events: Any) -> Any:
            ingested.extend(events)
            return await ingest(events)

        app_state(app).feedback.ingest = capture  # type: ignore[method-assign]
        assert (await client.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})).status_code == 200
        events = [
            {"user_id": "u1", "item_id": "m21", "type": "click"},
            {"user_id": "u9", "item_id": "m3", "type": "view"},
        ]
        assert (await client.post("/feedback", json={"events": events})).status_code == 202
        window, vector = rec.users.last("u1")  # type: ignore[misc]
        served = ingested[0].served
        assert served.model == rec.c.model.version
        assert served.window == window_fingerprint([rec.c.catalogue.data.item_ids[i] for i in window])
        np.testing.assert_array_equal(served.array(), vector.numpy())
        assert ingested[1].served is None  # u9 was not served since the service started
        forged = {**events[0], "served": served.model_dump()}
        r = await client.post("/feedback", json={"events": [forged]})
        assert r.status_code == 422
        assert "served" in r.json()["detail"]["field"].split(".")
