"""Hostile input against the real app (lifespan included), two stages, neither may cause a 5xx:

1. Schemathesis against the app's own OpenAPI, in process over ASGI: every response must match the
   documented schema.
2. Hostile JSON (`hostile`): raw bytes no schema-driven generator sends - NaN and Infinity (which
   Python's `json.dumps` writes), numbers that overflow a float, duplicate keys, deep nesting, invalid
   UTF-8, lone surrogate escapes, a byte order mark, wrong or missing content types - to every POST
   route, and odd ids to the item path. Every answer must be a documented 4xx in the error shape
   `{"detail": {"field": ..., "reason": ...}}`, and the body-level ones name `body`.

Then the ids the service must accept as sent (emails, UUIDs, slashes, spaces, non-Latin scripts,
emoji) make the round trip: item added and fetched, feedback accepted, history recorded in Redis, the
item excluded from the next list. A bounded run here; the bench runs more (`bench/fuzz.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from httpx import AsyncClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from redis.asyncio import Redis
from schemathesis.python import asgi

from retrieval.history import RedisHistoryStore
from service.app import create_app
from service.settings import ApiSettings, FeedbackSettings, IndexSettings, Settings
from tests.conftest import REDIS_URL, SmallTrained

EXAMPLES = 25  # per operation
# writes are rate limited per caller: a fuzzer that only ever sees 429s tests nothing behind them
FUZZ_API = ApiSettings(write_rate_per_s=10_000, write_burst=100_000)


@pytest.fixture(scope="module")
def fuzz_client(
    checkpoint: Path, small_trained: SmallTrained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz")
    ix, spool = IndexSettings(location=str(root / "ix")), FeedbackSettings(spool_dir=root / "spool")
    settings = Settings(model_dir=checkpoint, cache_dir=small_trained.cache, index=ix, feedback=spool,
                        added_items_log=root / "added.jsonl", api=FUZZ_API, state_dir=root / "state")  # fmt: skip
    app = create_app(settings)
    with asgi.get_client(app) as client:  # one client for the run: the lifespan starts once
        client.app_under_test = app
        yield client


def fuzz(client: Any, examples: int) -> int:
    """Every operation of the app's OpenAPI, `examples` generated cases each; returns the cases run.
    `call_and_validate` fails on a 5xx or a response that does not match its documented schema."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app_under_test)
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(operation.as_strategy())
        @hypothesis_settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                             database=None)  # fmt: skip
        def run(case: Any) -> None:
            nonlocal ran
            ran += 1
            case.call_and_validate(session=client)

        run()
    return ran


# A valid body per route with one `%s` where a number goes; routes not named here get GENERIC.
TEMPLATES = {
    "/recommend": '{"user_id": "u1", "k": 5, "debias": {"gamma": %s}}',
    "/feedback": '{"events": [{"user_id": "u1", "item_id": "m1", "type": "rating", "value": %s}]}',
    "/items": '{"items": [{"item_id": "fuzz-new", "title": "A film", "year": %s}]}',
}
GENERIC = '{"x": %s}'
JSON = "application/json"


def hostile_bodies(template: str) -> dict[str, tuple[bytes, str | None]]:
    """name -> (body bytes, content type) that must each get a 422 naming `body`."""
    valid = (template % "1").encode()
    numbers = {n: n for n in ("NaN", "Infinity", "-Infinity", "1e999", "-1e999")} | {"10**5000": "1" + "0" * 5000}
    cases: dict[str, tuple[bytes, str | None]] = {
        f"number {name}": ((template % n).encode(), JSON) for name, n in numbers.items()
    }
    cases |= {
        "duplicate keys": (valid[:-1] + b", " + valid[1:], JSON),  # each key twice: Python keeps the last
        "10k deep": (b"[" * 10_000 + b"]" * 10_000, JSON),
        "1M deep": (b"[" * 1_000_000, JSON),  # unclosed: 1 MB, just under the body limit
        "deep inside": (valid[:-1] + b', "z": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", JSON),
        "invalid UTF-8": (valid.replace(b'"', b'"\xff', 1), JSON),
        "overlong UTF-8": (valid.replace(b'"', b'"\xc0\xaf', 1), JSON),
        "lone surrogate": (valid.replace(b'"', b'"\\ud800', 1), JSON),
        "lone low surrogate": (valid.replace(b'"', b'"\\udc00', 1), JSON),
        "BOM": (b"\xef\xbb\xbf" + valid, JSON),
        "UTF-16": ((template % "1").encode("utf-16"), JSON),
        "empty": (b"", JSON),
        "truncated": (valid[: len(valid) // 2], JSON),
        "trailing garbage": (valid + b" x", JSON),
        "two documents": (valid + valid, JSON),
        "single quotes": (valid.replace(b'"', b"'"), JSON),
        "top-level array": (b"[" + valid + b"]", JSON),
        "top-level string": (b'"hello"', JSON),
        "top-level number": (b"1", JSON),
        "null": (b"null", JSON),
        "text/plain": (valid, "text/plain"),
        "form": (valid, "application/x-www-form-urlencoded"),
        "no content type": (valid, None),
        "json charset utf-16": ((template % "1").encode("utf-16"), "application/json; charset=utf-16"),
    }
    return cases


# Well-formed JSON the schema refuses: the cases, each a 422 naming the field.
OUT_OF_RANGE = [
    ("/recommend", '{"user_id": "1", "k": 5, "debias": {"gamma": 1e308}}', "debias.gamma"),
    ("/recommend", '{"user_id": "1", "k": 5, "debias": {"gamma": 1%s}}' % ("0" * 400), "debias.gamma"),
    ("/recommend", '{"user_id": "1", "k": 1%s}' % ("0" * 400), "k"),
    ("/feedback", '{"events": [{"user_id": "1", "item_id": "m1", "type": "rating", "value": 1e6}]}',
     "events.0.value"),
    ("/feedback", '{"events": [{"user_id": "1", "item_id": "m1", "type": "rating", "value": -1}]}',
     "events.0.value"),
    ("/feedback", '{"events": [{"user_id": "1", "item_id": "m1", "type": "rating", "value": 1%s}]}' % ("0" * 400),
     "events.0.value"),
    ("/feedback", '{"events": [{"user_id": "a\\u0000b", "item_id": "m1", "type": "view"}]}', "events.0.user_id"),
    ("/recommend", '{"user_id": " padded"}', "user_id"),
]  # fmt: skip
ODD_PATHS = ["/items/%FF", "/items/%00", "/items/a%0Ab", "/items/%E2%80%AE", "/items/" + "x" * 5000, "/items/%20"]


def _check(r: Any, operation: dict[str, Any], what: str, field: str | None, only: int | None = None) -> list[str]:
    """Problems with one answer: not a documented 4xx (or not `only`), not the error shape, or the wrong
    field. `r` is the exception when the app raised instead of answering."""
    if isinstance(r, Exception):
        return [f"{what}: raised {type(r).__name__}: {str(r)[:200]}"]
    problems = []
    if not 400 <= r.status_code < 500 or (only is not None and r.status_code != only):
        problems.append(f"{what}: {r.status_code}")
    elif str(r.status_code) not in operation.get("responses", {}):
        problems.append(f"{what}: {r.status_code} is not documented")
    try:
        detail = r.json()["detail"]
        shaped = isinstance(detail["reason"], str) and detail["reason"] and isinstance(detail["field"], str | None)
    except (ValueError, KeyError, TypeError):
        shaped = False
    if not shaped:
        problems.append(f"{what}: not the error shape: {r.text[:200]!r}")
    elif field is not None and r.status_code == 422 and detail["field"] != field:
        problems.append(f"{what}: field {detail['field']!r}, expected {field!r}")
    return problems


def _send(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except Exception as e:  # the in-process client re-raises what the app raised: a 5xx
        return e


def hostile(client: Any) -> int:
    """Stage 2 against every POST route and the item path; returns the requests sent, raises
    AssertionError listing every answer that was not a documented 4xx in the error shape."""
    paths = client.get("/openapi.json").json()["paths"]
    problems: list[str] = []
    sent = 0
    for path, methods in paths.items():
        if "post" not in methods:
            continue
        for name, (body, content_type) in hostile_bodies(TEMPLATES.get(path, GENERIC)).items():
            headers = {"content-type": content_type} if content_type else {}
            r = _send(client, "POST", path, data=body, headers=headers)
            problems += _check(r, methods["post"], f"POST {path} {name}", "body", only=422)
            sent += 1
    for path, body, field in OUT_OF_RANGE:
        r = _send(client, "POST", path, data=body.encode(), headers={"content-type": JSON})
        problems += _check(r, paths[path]["post"], f"POST {path} {body[:60]}", field, only=422)
        sent += 1
    item_path = next((p for p in paths if p.startswith("/items/{")), None)
    for path in ODD_PATHS if item_path else []:
        r = _send(client, "GET", path)
        problems += _check(r, paths[item_path]["get"], f"GET {path[:40]}", None)
        sent += 1
    assert not problems, "\n".join(problems)
    return sent


def test_no_input_gets_a_5xx_and_every_answer_matches_its_schema(fuzz_client: Any) -> None:
    assert fuzz(fuzz_client, EXAMPLES) >= 3 * EXAMPLES  # the three body-taking operations reach the bound


def test_hostile_json_gets_a_documented_4xx_naming_the_body(fuzz_client: Any) -> None:
    assert hostile(fuzz_client) > 3 * len(hostile_bodies(GENERIC))


ROUND_TRIP_IDS = [
    "jane.doe@example.com",
    "550e8400-e29b-41d4-a716-446655440000",
    "catalog/films/42",
    "Jane Q. Public",
    "a+b=c?d#e%20&f",
    "山田太郎",
    "Иван Петров",
    "محمد بن موسى",
    "🎬🍿",
    "..",
]


@pytest.mark.anyio
async def test_any_printable_id_round_trips(client: AsyncClient, prefix: str) -> None:
    """Each id as user and as item: added, fetched by path, liked, kept in the Redis history, excluded
    from that user's next list while every other item, the other odd ids included, is served."""
    items = [{"item_id": x, "title": f"A film about ids, part {n}", "categories": ["Drama"]}
             for n, x in enumerate(ROUND_TRIP_IDS)]  # fmt: skip
    r = await client.post("/items", json={"items": items})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ROUND_TRIP_IDS
    redis = Redis.from_url(REDIS_URL)
    try:
        for external in ROUND_TRIP_IDS:
            await _round_trip(client, RedisHistoryStore(redis, prefix + "history:"), external)
    finally:
        await redis.aclose()


async def _round_trip(client: AsyncClient, history: RedisHistoryStore, external: str) -> None:
    if external != "..":  # clients resolve dot segments away (RFC 3986 5.2.4): that id is body-only
        fetched = await client.get("/items/" + quote(external, safe=""))
        assert fetched.status_code == 200, (external, fetched.text)
        assert fetched.json()["item_id"] == external
    event = {"event_id": external, "user_id": external, "item_id": external, "type": "like",
             "timestamp": int(time.time())}  # fmt: skip
    r = await client.post("/feedback", json={"events": [event]})
    assert r.status_code == 202, (external, r.text)
    assert r.json()["accepted"] == 1
    assert [i for i, _ in await history.recent(external, 10)] == [external]
    r = await client.post("/recommend", json={"user_id": external, "k": 100, "explain": False})
    assert r.status_code == 200, (external, r.text)
    listed = {it["item_id"] for it in r.json()["items"]}
    assert external not in listed  # seen
    assert {"m3", *ROUND_TRIP_IDS} - {external} <= listed, external
