"""Items added after training reach the learner through the item log (a file in the embedded default, a
Redis stream with Redis), are learnt from their clicks, survive a learner restart, and are served by id
whatever order a service added them in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from common.adapter import decode
from common.adapter_store import MemoryAdapterStore
from common.events import FeedbackEvent
from common.settings import AdapterSettings
from learner.build import build_learner, resume
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner
from learner.settings import GuardSettings, OnlineSettings
from models.adapter import AdapterView, ServingAdapter
from retrieval.catalog import NewItem
from retrieval.item_log import START, FileItemLog, ItemLog, RedisItemLog
from service.settings import Settings
from service.state import app_state
from tests.conftest import REDIS_URL, SmallTrained, serve, until, with_

pytestmark = pytest.mark.anyio
NEW = [NewItem("new-space", "The robots starship sequel", ("Sci-Fi",), 2024.0, "robots galaxy orbit"),
       NewItem("new-love", "Letters from Paris", ("Romance",), 2024.0, "wedding summer kiss")]  # fmt: skip


@pytest.fixture(params=["file", "redis"])
async def item_log(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> AsyncIterator[ItemLog]:
    if request.param == "file":
        yield FileItemLog(tmp_path / "items.jsonl")
        return
    redis = Redis.from_url(REDIS_URL)
    yield RedisItemLog(redis, prefix + "items")
    await redis.aclose()


async def test_an_item_log_reads_back_in_order_from_any_cursor(item_log: ItemLog) -> None:
    assert await item_log.read() == ([], START)
    await item_log.append(NEW[:1])
    first, cursor = await item_log.read()
    await item_log.append(NEW[1:])
    later, end = await item_log.read(cursor)
    assert (first, later) == (NEW[:1], NEW[1:])
    assert (await item_log.read())[0] == NEW
    assert await item_log.read(end) == ([], end)


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    log = FileItemLog(tmp_path / "items.jsonl")
    log.append_sync(NEW[:1])
    with log.path.open("a") as f:
        f.write('{"item_id": "half')
    assert log.read_sync()[0] == NEW[:1]


def _learner(checkpoint: Path, st: SmallTrained, store: MemoryAdapterStore, log: ItemLog) -> Learner:
    online = OnlineSettings(popularity_half_life_days=30).to_config()
    return build_learner(checkpoint, st.cache, store, AdapterSettings(signing_key="k"),  # type: ignore[arg-type]
                         online, GuardSettings(holdout_every=0).to_config(), LearnerMetrics(), fisher_examples=64,
                         item_log=log)  # fmt: skip


def _clicks(item: str, users: Sequence[int], t0: int = 1_700_000_000) -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=uuid.uuid4().hex, user_id=f"u{u}", item_id=item, type="click",  # type: ignore[arg-type]
                          timestamp=t0 + n) for n, u in enumerate(users)]  # fmt: skip


async def test_a_new_item_is_learnt_from_its_clicks_and_kept_over_a_restart(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    store, log = MemoryAdapterStore(), FileItemLog(tmp_path / "items.jsonl")
    learner = _learner(checkpoint, small_trained, store, log)
    n = learner.trained_items
    await log.append(NEW)
    before = learner.trainer.items[:n].clone()
    space_fans = [u for u in range(1, 40, 2)]  # odd users watch space films
    out = await learner.process(_clicks("new-space", space_fans))
    assert (out.applied, out.unknown, out.version) == (len(space_fans), 0, 1)
    assert learner.trainer.items[:n].equal(before)  # the trained items' vectors are untouched
    fields = await store.fetch(1)
    assert fields is not None
    dim = learner.trainer.items.shape[1]
    manifest, tensors = decode(fields, b"k", ServingAdapter.shapes_for(dim, n, AdapterSettings().rank), 0)
    assert manifest.items == ["new-space", "new-love"]
    space, love = n, n + 1
    assert np.linalg.norm(tensors["item_delta"][space]) > 0
    assert not tensors["item_delta"][love].any()
    assert tensors["log_pop"][space] > tensors["log_pop"][love] == 0

    # the clicks moved the new item towards the users who clicked it
    with_clicks = learner.trainer.items + learner.trainer.adapter.item_delta.detach()
    users = learner.trainer.base_users([np.asarray([i for i in range(20) if i % 3], np.int64)])[0]
    assert float(with_clicks[space] @ users) > float(learner.trainer.items[space] @ users)

    again = _learner(checkpoint, small_trained, store, log)  # a restarted learner reads the log, then resumes
    assert await resume(again) == 1
    assert again.item_ids[n:] == ["new-space", "new-love"]
    np.testing.assert_array_equal(again.published_state["item_delta"], tensors["item_delta"])


def test_a_service_places_the_added_rows_by_id_whatever_order_it_added_them_in() -> None:
    rng = np.random.default_rng(0)
    trained, dim = 3, 4
    tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in ServingAdapter.shapes(dim, trained + 2, 2).items()}
    view = AdapterView(1, tensors, ["b", "a"])  # the learner learnt of b first
    vectors = rng.normal(size=(trained + 3, dim + 1)).astype(np.float32)  # this service added a, c, b
    rows = view.item_rows(vectors, {"x0": 0, "x1": 1, "x2": 2, "a": 3, "c": 4, "b": 5})
    np.testing.assert_allclose(rows[3, :-1], vectors[3, :-1] + tensors["item_delta"][4])  # a: row 4
    np.testing.assert_allclose(rows[5, :-1], vectors[5, :-1] + tensors["item_delta"][3])  # b: row 3
    np.testing.assert_array_equal(rows[4], vectors[4])  # c: the learner has no row for it yet
    assert rows[5, -1] == tensors["log_pop"][3]


async def test_posted_items_reach_the_embedded_learner_and_their_learnt_rows_are_indexed(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    from llm4rec.embedded import EmbeddedLearner
    from tests.learner.test_end_to_end import _learner_settings

    store = MemoryAdapterStore()
    ls = _learner_settings(checkpoint, small_trained, "x:")
    s = with_(settings, redis_url=None, adapter=ls.adapter.model_copy(update={"poll_s": 0.2}))
    async with serve(s, store) as (client, app):
        state = app_state(app)
        learner = await EmbeddedLearner(state, ls, store).attach()
        body = {"items": [{"item_id": it.item_id, "title": it.title, "categories": list(it.categories),
                           "text": it.text} for it in NEW]}  # fmt: skip
        assert (await client.post("/items", json=body)).status_code == 200
        events = [e.model_dump(mode="json") for e in _clicks("new-space", range(1, 40, 2))]
        assert (await client.post("/feedback", json={"events": events})).status_code == 202
        await until(lambda: state.recommender.adapters.current.version >= 1, 20)
        cat = state.recommender.c.catalogue
        i = cat.item_index["new-space"]
        assert learner.metrics.registry.get_sample_value("recsys_learner_unknown_items_total") == 0
        assert learner.item_index["new-space"] == i  # one log, one order
        assert np.abs(cat.served[i] - cat.vectors[i]).max() > 0.01  # the learnt row is what the index holds


async def test_an_item_the_log_cannot_take_is_refused_with_a_503_and_not_added(settings: Settings) -> None:
    async with serve(with_(settings, redis_url="redis://127.0.0.1:1/0")) as (client, _):  # Redis away
        body = {"items": [{"item_id": "new-space", "title": NEW[0].title}]}
        r = await client.post("/items", json=body)
        assert r.status_code == 503
        assert r.json()["detail"]["reason"] == "items could not be made durable; retry"
        assert (await client.get("/items/new-space")).status_code == 404


async def test_items_another_replica_added_are_served_within_a_poll(settings: Settings) -> None:
    a = settings.adapter.model_copy(update={"poll_s": 0.2})
    async with serve(with_(settings, adapter=a)) as (client, app):
        other = RedisItemLog(app_state(app).redis, settings.items_stream)  # what another replica's POST writes
        await other.append(NEW[:1])
        await until(lambda: _found(client, NEW[0].item_id), 10)


async def _found(client: AsyncClient, item_id: str) -> bool:
    return (await client.get(f"/items/{item_id}")).status_code == 200
