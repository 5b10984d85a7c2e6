"""Shared fixtures: small datasets built in code (tests run in seconds and state exactly what they
contain), a briefly trained model and its checkpoint, and the service served through httpx with its
lifespan, with settings pointing at the real Redis (a unique key prefix per test)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis

from common.adapter_store import AdapterStore
from models.data import CategoricalField, Interactions, RecDataset, UserAttribute
from models.llm4rec import LLM4Rec
from models.scoring import TrainData
from models.splits import Split, leave_one_out
from recdata import load_dataset
from recdata.tables import DatasetSpec, Tables
from service.app import create_app
from service.settings import FeedbackSettings, IndexSettings, Settings
from service.state import app_state
from tests.redis_keys import delete_prefixed
from training.llm4rec_train import Switches, build_model, save_checkpoint


def make_dataset(users: list[list[int]], num_items: int, genders: list[int] | None = None) -> RecDataset:
    """users[u] = u's items in time order; items get one genre each (item % 3)."""
    u = np.concatenate([np.full(len(s), i) for i, s in enumerate(users)]).astype(np.int64)
    it = np.concatenate([np.asarray(s) for s in users]).astype(np.int64)
    ts = np.concatenate([np.arange(len(s)) * 100 + i for i, s in enumerate(users)]).astype(np.int64)
    genres = CategoricalField(("a", "b", "c"), np.arange(num_items + 1, dtype=np.int64), np.arange(num_items) % 3)
    attrs = {}
    if genders is not None:
        attrs["gender"] = UserAttribute(("F", "M"), np.asarray(genders, dtype=np.int64))
    return RecDataset(
        "synthetic",
        tuple(f"u{i}" for i in range(len(users))),
        tuple(f"i{j}" for j in range(num_items)),
        Interactions(u, it, ts, None),
        {"title": tuple(f"item {j}" for j in range(num_items))},
        {"genres": genres},
        {},
        attrs,
        ("gender",) if genders is not None else (),
    )


@pytest.fixture
def clustered() -> RecDataset:
    """Two user communities, each consuming its own half of 40 items in a random order."""
    rng = np.random.default_rng(0)
    users = []
    for u in range(60):
        half = np.arange(20) + (20 if u % 2 else 0)
        users.append(rng.permutation(half)[:12].tolist())
    return make_dataset(users, 40, genders=[u % 2 for u in range(60)])


@pytest.fixture
def cyclic() -> RecDataset:
    """Every user walks the ring 0 -> 1 -> ... -> 29 -> 0 from a random start: the next item is
    fully determined by the last one, which only a sequential model can exploit."""
    rng = np.random.default_rng(1)
    users = []
    for _ in range(80):
        start = int(rng.integers(30))
        users.append([(start + t) % 30 for t in range(int(rng.integers(8, 16)))])
    return make_dataset(users, 30)


@dataclass(frozen=True)
class SmallTrained:
    """A briefly trained full LLM4Rec (real MiniLM text) on a 60-user, 40-item dataset with two
    themes, its dataset and split, the on-disk dataset folder and the text-embedding cache."""

    model: LLM4Rec
    data: RecDataset
    split: Split
    train: TrainData
    folder: Path
    cache: Path


def _themed_tables(dst: Path) -> None:
    """Items 0-19 are space films, 20-39 romances; odd users watch space, even users romance. Users
    from u40 on first watched five of the other theme: without such switches nothing in the data says
    whether the newest items or the oldest ones tell what comes next."""
    rng = np.random.default_rng(0)
    space = ["robots", "starship", "galaxy", "alien", "orbit"]
    love = ["paris", "wedding", "letters", "summer", "kiss"]
    items = [["item_id", "title", "genres", "year"]]
    for i in range(40):
        words, genre = (space, "Sci-Fi|Action") if i < 20 else (love, "Romance|Drama")
        items.append([f"m{i}", f"The {words[i % 5]} story part {i // 5}", genre, str(1980 + i)])
    rows = [["user_id", "item_id", "timestamp"]]
    for u in range(60):
        pool = np.arange(20) + (0 if u % 2 else 20)
        seq = list(rng.permutation(pool)[:10])
        if u >= 40:
            seq = list(rng.permutation((pool + 20) % 40)[:5]) + seq
        for t, i in enumerate(seq):
            rows.append([f"u{u}", f"m{i}", str(1_600_000_000 + 86_400 * t + u)])
    Tables(DatasetSpec("themed", ("title",), {"genres": "|"}, ("year",)), rows, items).write(dst)


@pytest.fixture(scope="session")
def small_trained(tmp_path_factory: pytest.TempPathFactory) -> SmallTrained:
    root = tmp_path_factory.mktemp("small-trained")
    _themed_tables(root / "data")
    data = load_dataset(root / "data")
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    torch.manual_seed(0)
    model = build_model(data, train, Switches(), root / "cache", progress=False)
    rng = np.random.default_rng(0)
    for _ in range(15):
        model.fit_epoch(train, rng)
    model.eval()
    model.serve_gamma = float(model.gamma.detach())
    return SmallTrained(model, data, split, train, root / "data", root / "cache")


@pytest.fixture(scope="session")
def checkpoint(small_trained: SmallTrained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    extra = {"dataset_ref": str(small_trained.folder), "run": {"split": "leave-one-out", "min_rating": None, "seed": 0}}
    save_checkpoint(out, small_trained.model, small_trained.data, small_trained.split.train, Switches(), extra)
    return out


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"test:svc:{uuid.uuid4().hex}:"
    yield p
    redis = Redis.from_url(REDIS_URL)
    await delete_prefixed(redis, p)
    await redis.aclose()


@pytest.fixture
def settings(checkpoint: Path, small_trained: SmallTrained, tmp_path: Path, prefix: str) -> Settings:
    return Settings(
        model_dir=checkpoint, cache_dir=small_trained.cache, redis_url=REDIS_URL, history_prefix=prefix + "history:",
        model_key=prefix + "model",
        index=IndexSettings(location=str(tmp_path / "index")),
        feedback=FeedbackSettings(spool_dir=tmp_path / "spool", dedupe_prefix=prefix + "event:"),
        added_items_log=tmp_path / "added-items.jsonl", state_dir=tmp_path / "state", items_stream=prefix + "items",
    )  # fmt: skip


@asynccontextmanager
async def serve(
    settings: Settings, adapter_store: AdapterStore | None = None, context: bool = True
) -> AsyncIterator[tuple[AsyncClient, FastAPI]]:
    """The app with its lifespan; `context`: once a trained model's RAG context, embedded in the
    background after startup, is in (as a client would wait for /readyz to say so)."""
    app = create_app(settings, adapter_store=adapter_store)
    async with (
        LifespanManager(app, startup_timeout=120, shutdown_timeout=30) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://test") as c,
    ):
        if context and settings.rag.enabled:
            serving = app_state(app).serving
            await until(lambda: serving.current.c.model.cold_start or serving.current.c.context is not None)
        yield c, app


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with serve(settings) as (c, _):
        yield c


async def until(condition: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Until `condition()` (or the coroutine it returns) is truthy, polling every 50 ms."""
    for _ in range(int(timeout_s / 0.05)):
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def with_(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)
