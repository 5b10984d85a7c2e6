"""Scale-out: several service workers behind a load balancer share users' histories, the event-id memory
and the adapters through Redis, and the item index through a Qdrant server. No Qdrant server runs here,
so each worker reads its own qdrant-client local-mode copy built from the same checkpoint (what the
server would hold); what the workers must share is what this test checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from common.adapter import Manifest, encode
from common.adapter_store import RedisAdapterStore
from common.settings import AdapterSettings
from service.settings import IndexSettings, Settings
from service.state import app_state
from tests.conftest import REDIS_URL, serve, until, with_

pytestmark = pytest.mark.anyio


async def test_two_workers_share_history_event_ids_and_adapters(settings: Settings, tmp_path: Path,
                                                                 prefix: str) -> None:  # fmt: skip
    adapter = AdapterSettings(prefix=prefix + "adapter:", signing_key="sign", poll_s=0.2)  # type: ignore[arg-type]

    def worker(name: str) -> Settings:
        return with_(settings, adapter=adapter, index=IndexSettings(location=f"qdrant-local:{tmp_path / name}"))

    async with serve(worker("a")) as (a, app_a), serve(worker("b")) as (b, app_b):
        before = (await b.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})).json()["items"]
        top = before[0]["item_id"]
        event = {"event_id": "shared-1", "user_id": "u1", "item_id": top, "type": "like"}
        assert (await a.post("/feedback", json={"events": [event]})).json()["accepted"] == 1
        again = (await b.post("/feedback", json={"events": [event]})).json()
        assert again["duplicates"] == 1  # the event-id memory is shared
        after = (await b.post("/recommend", json={"user_id": "u1", "k": 3, "explain": False})).json()["items"]
        assert top not in {it["item_id"] for it in after}  # worker b reads the history worker a appended

        watcher = app_state(app_a).recommender.adapters
        assert watcher is not None
        tensors = watcher.current.tensors()
        manifest = Manifest(1, watcher.base_model, {k: list(v.shape) for k, v in tensors.items()}, 1)
        redis = Redis.from_url(REDIS_URL)
        await RedisAdapterStore(redis, adapter.prefix).publish(1, encode(tensors, manifest, b"sign"), [])
        await redis.aclose()
        for app in (app_a, app_b):  # both workers swap to the published version
            w = app_state(app).recommender.adapters
            assert w is not None
            await until(lambda w=w: w.current.version == 1, timeout_s=10)  # type: ignore[misc]
