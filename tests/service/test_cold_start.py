"""No trained model yet: the service answers at once from content vectors and popularity, says so, and
swaps the trained model in later without a failed request."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from httpx import AsyncClient

from service.components import NotReadyError
from service.settings import ColdStartSettings, Settings
from service.state import app_state
from tests.conftest import SmallTrained, serve, until, with_

pytestmark = pytest.mark.anyio


async def _serves(client: AsyncClient, version: str) -> bool:
    r = await client.post("/recommend", json={"user_id": "u1", "k": 1, "explain": False})
    return bool(r.json()["model_version"] == version)


def _cold(settings: Settings, small_trained: SmallTrained, tmp_path: Path) -> Settings:
    return with_(settings, model_dir=tmp_path / "model",
                 cold_start=ColdStartSettings(dataset=str(small_trained.folder), gamma=0.0))  # fmt: skip


async def test_cold_start_answers_then_the_trained_model_swaps_in_without_a_failed_request(
    settings: Settings, small_trained: SmallTrained, checkpoint: Path, tmp_path: Path
) -> None:
    s = _cold(settings, small_trained, tmp_path)
    async with serve(s) as (client, app):
        r = await client.post("/recommend", json={"user_id": "u1", "k": 5})
        assert r.status_code == 200
        assert r.json()["cold_start"] is True
        assert r.json()["model_version"] in {"cold-start:popularity", "cold-start:content"}
        await until(lambda: _serves(client, "cold-start:content"), timeout_s=60)
        body = (await client.post("/recommend", json={"user_id": "u1", "k": 5})).json()
        assert body["items"][0]["explanation"]["text"]
        # content alone already separates the themes: u1 watches space films (items 0-19)
        assert sum(int(it["item_id"][1:]) < 20 for it in body["items"]) >= 4
        ready = (await client.get("/readyz")).json()
        assert ready["ready"]
        assert ready["cold_start"]
        assert ready["dependencies"]["model"] == "cold-start content"
        added = await client.post("/items", json={"items": [{"item_id": "new-1", "title": "The robots story"}]})
        assert added.json()["added"] == ["new-1"]

        statuses: list[int] = []
        versions: set[str] = set()

        swapped = asyncio.Event()

        async def load() -> None:  # requests before, during and after the swap (at least 5 started after it)
            after_swap = 0
            while after_swap < 5 or len(statuses) < 20:
                after_swap += swapped.is_set()
                r = await client.post("/recommend", json={"user_id": "u1", "k": 5, "explain": False})
                statuses.append(r.status_code)
                versions.add(r.json()["model_version"])

        shutil.copytree(checkpoint, s.model_dir)
        traffic = asyncio.create_task(load())
        await asyncio.sleep(0.05)
        await app_state(app).load_trained(context=False)
        swapped.set()
        await traffic
        assert statuses
        assert set(statuses) == {200}
        after = (await client.post("/recommend", json={"user_id": "u1", "k": 5})).json()
        assert after["cold_start"] is False
        assert not after["model_version"].startswith("cold-start")
        assert versions == {"cold-start:content", after["model_version"]}
        assert (await client.get("/items/new-1")).json()["title"] == "The robots story"  # replayed into the model
        deps = (await client.get("/readyz")).json()["dependencies"]
        assert deps["model"] == "trained"
        assert deps["context"] == "off"
        # then with RAG context, added to the served bundle (as the background build does) ...
        await app_state(app).add_context()
        assert (await client.get("/readyz")).json()["dependencies"]["context"] == "ready"
        # ... and a reload: a second bundle on the same embedded index, which opens once per process
        await app_state(app).load_trained()
        assert (await client.get("/readyz")).json()["dependencies"]["context"] == "ready"
        explained = (await client.post("/recommend", json={"user_id": "u1", "k": 3})).json()["items"]
        assert all(it["explanation"]["weights"].get("context") is not None for it in explained)


async def test_without_cold_start_a_missing_model_is_an_error(
    settings: Settings, small_trained: SmallTrained, tmp_path: Path
) -> None:
    s = with_(_cold(settings, small_trained, tmp_path), cold_start=ColdStartSettings(enabled=False))
    with pytest.raises(NotReadyError, match="no checkpoint"):
        async with serve(s):
            pass


async def test_request_id_in_body_equals_header_and_a_client_id_is_kept(settings: Settings) -> None:
    async with serve(settings) as (client, _):
        r = await client.post("/recommend", json={"user_id": "u1", "k": 2})
        assert r.json()["request_id"] == r.headers["x-request-id"]
        mine = await client.post("/recommend", json={"user_id": "u1", "k": 2}, headers={"X-Request-ID": "req-42"})
        assert mine.headers["x-request-id"] == mine.json()["request_id"] == "req-42"
        bad = await client.post("/recommend", json={"user_id": "u1", "k": 2}, headers={"X-Request-ID": "a\tb"})
        assert bad.json()["request_id"] == bad.headers["x-request-id"] != "a\tb"
        event = {"user_id": "u1", "item_id": "m30", "type": "click", "request_id": "req-42", "position": 1}
        assert (await client.post("/feedback", json={"events": [event]})).status_code == 202
