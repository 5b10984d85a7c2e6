"""How many of our modules one request runs through (the README's layout section states the count):
a request that wanders through many modules, or climbs back up the layers, is hard to follow."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import pytest
from httpx import AsyncClient

pytestmark = pytest.mark.anyio
PACKAGES = ("common", "models", "recdata", "training", "retrieval", "service", "learner", "llm4rec")
LAYER = {"llm4rec": 0, "service": 1, "learner": 1, "retrieval": 2, "training": 3, "recdata": 4, "models": 5,
         "common": 6}  # fmt: skip  # the import-linter contract's order


async def trace(call: Callable[[], Awaitable[Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Our modules whose functions run during `call`, in first-call order, and every call from a lower
    layer into a higher one (caller, callee): the nearest of our frames below each call is its caller."""
    seen: dict[str, None] = {}
    upward: list[tuple[str, str]] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        name = frame.f_globals.get("__name__", "")
        if event != "call" or name.split(".")[0] not in PACKAGES:
            return
        seen.setdefault(name, None)
        caller = frame.f_back
        while caller is not None and caller.f_globals.get("__name__", "").split(".")[0] not in PACKAGES:
            caller = caller.f_back
        if caller is not None:
            up = caller.f_globals["__name__"]
            if LAYER[up.split(".")[0]] > LAYER[name.split(".")[0]]:
                upward.append((up, name))

    sys.setprofile(profile)
    try:
        await call()
    finally:
        sys.setprofile(None)
    return list(seen), upward


async def test_requests_only_call_down_the_layers_through_few_modules(client: AsyncClient) -> None:
    await client.post("/recommend", json={"user_id": "u1", "k": 5})  # warm: caches filled as in steady state
    recommend, up_r = await trace(lambda: client.post("/recommend", json={"user_id": "u1", "k": 5}))
    event = {"user_id": "u3", "item_id": "m7", "type": "click"}
    feedback, up_f = await trace(lambda: client.post("/feedback", json={"events": [event]}))
    print("recommend:", recommend, "\nfeedback:", feedback)
    assert up_r == []
    assert up_f == []
    # the counts the README's layout section states: a new module on these paths should be a decision
    assert len(recommend) <= 14, recommend
    assert len(feedback) <= 12, feedback
