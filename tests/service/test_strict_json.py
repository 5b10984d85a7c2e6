"""The strict body parser and the 422 handler on a tiny app of their own (the service wires the same
pieces): every hostile body is a 4xx naming the field and the reason, never a 5xx, never an echo."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from httpx import ASGITransport, AsyncClient
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.events import ExternalId, FeedbackEvent
from service.strict_json import (
    MAX_DEPTH,
    Strict,
    StrictJSONRoute,
    error_field,
    http_failed,
    loads_strict,
    validation_failed,
)

pytestmark = pytest.mark.anyio


class DebiasIn(Strict):
    gamma: float = Field(ge=-10, le=10)


class BodyIn(Strict):
    user_id: ExternalId
    k: int = Field(10, ge=1, le=100)
    debias: DebiasIn | None = None
    events: list[FeedbackEvent] = Field(default_factory=list)


def _app(route_class: type | None = StrictJSONRoute, handler: bool = True) -> FastAPI:
    router = APIRouter(route_class=route_class) if route_class else APIRouter()

    @router.post("/echo")
    async def echo(body: BodyIn) -> dict[str, Any]:
        return body.model_dump(mode="json")

    @router.get("/items/{item_id:path}")
    async def item(item_id: ExternalId) -> dict[str, str]:
        if item_id != "a/b":
            raise HTTPException(404, detail={"field": "item_id", "reason": "unknown item"})
        return {"item_id": item_id}

    app = FastAPI()
    app.include_router(router)
    if handler:
        app.add_exception_handler(RequestValidationError, validation_failed)
        app.add_exception_handler(StarletteHTTPException, http_failed)
    return app


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(_app()), base_url="http://test") as c:
        yield c


JSON = {"content-type": "application/json"}
# Each is something Python's json (and so FastAPI) reads, or fails on with a 500 or a bare 400.
HOSTILE: dict[str, bytes] = {
    "NaN": b'{"user_id": "u1", "debias": {"gamma": NaN}}',
    "Infinity": b'{"user_id": "u1", "debias": {"gamma": Infinity}}',
    "-Infinity": b'{"user_id": "u1", "debias": {"gamma": -Infinity}}',
    "1e999": b'{"user_id": "u1", "debias": {"gamma": 1e999}}',
    "-1e999": b'{"user_id": "u1", "debias": {"gamma": -1e999}}',
    "duplicate key": b'{"user_id": "u1", "user_id": "u2"}',
    "10k deep": b'{"user_id": "u1", "k": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "1M deep": b"[" * 1_000_000,
    "invalid UTF-8": b'{"user_id": "u\xff1"}',
    "overlong UTF-8": b'{"user_id": "\xc0\xaf"}',
    "UTF-16": '{"user_id": "u1"}'.encode("utf-16"),
    "lone surrogate": b'{"user_id": "u1\\ud800"}',
    "BOM": b'\xef\xbb\xbf{"user_id": "u1"}',
    "huge integer": b'{"user_id": "u1", "k": ' + b"9" * 5000 + b"}",
    "truncated": b'{"user_id": "u1", "k": ',
    "trailing garbage": b'{"user_id": "u1"} x',
    "two documents": b'{"user_id": "u1"}{"user_id": "u2"}',
    "single quotes": b"{'user_id': 'u1'}",
    "comment": b'{"user_id": "u1" /* hi */}',
    "NUL": b'{"user_id": "u1"}\x00',
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_hostile_json_is_a_422_naming_the_body(client: AsyncClient, name: str) -> None:
    r = await client.post("/echo", content=HOSTILE[name], headers=JSON)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "body", detail
    assert detail["reason"].startswith("invalid JSON: ")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),  # empty: the body is missing
        (b"[1, 2]", "body"),  # top level not an object
        (b'"u1"', "body"),
        (b"null", "body"),
        (b'{"user_id": "u1", "debias": {"gamma": 11}}', "debias.gamma"),
        (b'{"user_id": "u1", "debias": {"gamma": 1e308}}', "debias.gamma"),
        (b'{"user_id": "u1", "k": 1' + b"0" * 400 + b"}", "k"),  # fine JSON, no 64-bit number
        (b'{"user_id": "u1", "surprise": 1}', "surprise"),
        (b'{"user_id": "bad\\nid"}', "user_id"),
        (b'{"user_id": " u1"}', "user_id"),
        (b'{"user_id": "u1", "events": [{"user_id": "u1", "item_id": "m1", "type": "rating", "value": 1e6}]}',
         "events.0.value"),
        (b'{"user_id": "u1", "events": [{"user_id": "u1", "item_id": "m1", "type": "view", "value": -1}]}',
         "events.0.value"),
    ],
)  # fmt: skip
async def test_well_formed_but_invalid_bodies_name_the_field(client: AsyncClient, body: bytes, field: str) -> None:
    r = await client.post("/echo", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["field"] == field
    assert r.json()["detail"]["reason"]


async def test_the_answer_never_echoes_the_input(client: AsyncClient) -> None:
    secret = "do-not-echo-" + "x" * 40
    r = await client.post("/echo", json={"user_id": "u1", "k": secret, secret: 1})
    assert r.status_code == 422
    assert secret not in r.text
    assert r.json()["detail"]["reason"].endswith("(and 1 more)")


@pytest.mark.parametrize(
    "headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}]
)
async def test_a_body_that_is_not_declared_json_is_refused(client: AsyncClient, headers: dict[str, str]) -> None:
    r = await client.post("/echo", content=b'{"user_id": "u1"}', headers=headers)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "body"


async def test_standard_json_with_any_printable_id_passes(client: AsyncClient) -> None:
    for user in ["jane.doe@example.com", "山田太郎", "a/b c", "😀"]:
        body = {"user_id": user, "debias": {"gamma": -2.5e0},
                "events": [{"user_id": user, "item_id": user, "type": "rating", "value": 4.5}]}  # fmt: skip
        r = await client.post("/echo", content=json.dumps(body, ensure_ascii=False).encode(), headers=JSON)
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user
        escaped = await client.post("/echo", content=json.dumps(body).encode(), headers=JSON)  # \\uXXXX escapes
        assert escaped.json()["events"][0]["item_id"] == user


async def test_without_the_strict_pieces_nan_is_the_issues_500() -> None:
    """The regression this module fixes: FastAPI's default parser reads NaN, the default handler echoes it,
    and the echo cannot be written as JSON."""
    app = _app(route_class=None, handler=False)
    async with AsyncClient(transport=ASGITransport(app, raise_app_exceptions=False), base_url="http://t") as c:
        r = await c.post("/echo", content=HOSTILE["NaN"], headers=JSON)
    assert r.status_code == 500


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/items/a%2Fb", 200, None),
        ("/items/c", 404, "item_id"),
        ("/items/a%0Ab", 404, None),  # the path converter stops at a newline: no route matches
        ("/items/%20c", 422, "item_id"),
        ("/nowhere", 404, None),
    ],
)
async def test_path_errors_have_the_error_shape(client: AsyncClient, path: str, status: int, field: str | None) -> None:
    r = await client.get(path)
    assert r.status_code == status, r.text
    if status != 200:
        assert r.json()["detail"]["field"] == field
        assert r.json()["detail"]["reason"]
    assert (await client.put("/echo")).json()["detail"]["reason"] == "Method Not Allowed"


def test_depth_is_bounded_without_recursion_and_strings_do_not_count() -> None:
    assert loads_strict(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    with pytest.raises(json.JSONDecodeError, match="nesting"):
        loads_strict(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    inside = json.dumps({"a": "[" * 100 + '\\"{' * 50, "b": "\\", "c": [[1]]}).encode()
    assert loads_strict(inside)["c"] == [[1]]


def test_valid_surrogate_pairs_decode() -> None:
    assert loads_strict(b'["\\ud83d\\ude00"]') == ["😀"]


def test_error_field_drops_the_source_but_keeps_the_path() -> None:
    assert error_field(("body", "events", 0, "user_id")) == "events.0.user_id"
    assert error_field(("body",)) == "body"
    assert error_field(("path", "item_id")) == "item_id"
