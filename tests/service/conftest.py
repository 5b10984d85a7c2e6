"""Shared fixtures for the service tests: a trained checkpoint on disk, settings pointing at the real
Redis (a unique key prefix per test) and at per-test index and spool folders, and the app served
through httpx with its lifespan."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis

from service.app import create_app
from service.settings import FeedbackSettings, IndexSettings, Settings
from tests.conftest import SmallTrained

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    p = f"test:svc:{uuid.uuid4().hex}:"
    yield p
    redis = Redis.from_url(REDIS_URL)
    keys = [k async for k in redis.scan_iter(match=p + "*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
def settings(checkpoint: Path, small_trained: SmallTrained, tmp_path: Path, prefix: str) -> Settings:
    return Settings(
        model_dir=checkpoint, cache_dir=small_trained.cache, redis_url=REDIS_URL, history_prefix=prefix + "history:",
        index=IndexSettings(location=str(tmp_path / "index")),
        feedback=FeedbackSettings(spool_dir=tmp_path / "spool", dedupe_prefix=prefix + "event:"),
    )  # fmt: skip


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://test") as c,
    ):
        yield c, app


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with serve(settings) as (c, _):
        yield c


def with_(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)
