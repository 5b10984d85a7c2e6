"""Strict JSON request bodies and the 422 answer: what RFC 8259 allows and nothing more, so any input
gets a 4xx naming the field and the reason, never a 5xx.

Python's `json` is lenient where the wire must not be: it reads `NaN`, `Infinity` and `-Infinity`
(which `json.dumps` writes), turns `1e999` into `inf`, keeps the last of duplicate keys (RFC 8259 §4:
"names SHOULD be unique"; which one wins differs between parsers, so a proxy and this service could read
two different requests), decodes lone surrogate escapes (`"\\ud800"`) into a str that cannot be encoded
as UTF-8 again, and recurses once per nesting level, so a deep enough body is a RecursionError. Starlette
also accepts UTF-16/32 and a byte order mark (§8.1: JSON on the wire is UTF-8, without a BOM).

`StrictJSONRoute` (FastAPI's custom Request and APIRoute pattern) makes a route read its body through
`loads_strict`; every refusal is a `json.JSONDecodeError`, which FastAPI turns into a 422
RequestValidationError of type `json_invalid`. `validation_failed` answers every RequestValidationError in
the project's error shape, `{"detail": {"field": ..., "reason": ...}}`, and never echoes the input:
FastAPI's default handler does, and a NaN in that echo made the response itself fail (a 500).
`http_failed` puts Starlette's own 404/405 answers in the same shape.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_DEPTH = 32  # the deepest wire model nests 4 levels; Python's parser recurses once per level
_BOM = b"\xef\xbb\xbf"
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # as int8: an opening bracket +1, a closing one -1
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # maybe a pair, maybe a lone half


class Strict(BaseModel):
    """Base of the request models: unknown fields and non-finite floats are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _RefusedError(ValueError):
    """Valid for Python's parser, refused here; turned into a JSONDecodeError by `loads_strict`."""


def loads_strict(body: bytes) -> Any:
    """Parse an RFC 8259 document from UTF-8 bytes, or raise json.JSONDecodeError saying why (its
    message carries the position; `doc` is left empty so the body is not kept)."""
    if body.startswith(_BOM):
        raise json.JSONDecodeError("a byte order mark is not allowed (RFC 8259 8.1)", "", 0)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise json.JSONDecodeError(f"invalid UTF-8 at byte {e.start}", "", e.start) from None
    if _deeper_than(body, MAX_DEPTH):
        raise json.JSONDecodeError(f"nesting deeper than {MAX_DEPTH} levels", "", 0)
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                         object_pairs_hook=_unique_keys)  # fmt: skip
    except json.JSONDecodeError as e:
        raise json.JSONDecodeError(str(e), "", e.pos) from None
    except RecursionError:  # unbalanced brackets the depth scan let through
        raise json.JSONDecodeError(f"nesting deeper than {MAX_DEPTH} levels", "", 0) from None
    except ValueError as e:  # ours, or an integer over sys.get_int_max_str_digits()
        raise json.JSONDecodeError(str(e) if isinstance(e, _RefusedError) else "number too large", "", 0) from None
    if _SURROGATE_ESCAPE.search(text) and not _encodable(doc):
        raise json.JSONDecodeError("a lone surrogate escape is not a Unicode character", "", 0)
    return doc


def _deeper_than(body: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than `limit`, in C-speed passes over the bytes and
    without recursion. Escaped backslashes and quotes go first, so every quote left opens or closes a
    string; the skeleton keeps brackets as +1/-1 steps and quotes; what lies between quote pairs is
    string content; the depth is the running sum's maximum."""
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_STEPS, _NOT_STRUCTURE)
    skeleton = skeleton.replace(b'""', b"")  # strings without brackets (nearly all of them)
    if b'"' in skeleton:
        skeleton = b"".join(skeleton.split(b'"')[::2])
    if len(skeleton) <= limit:
        return False
    return int(np.cumsum(np.frombuffer(skeleton, np.int8), dtype=np.int32).max()) > limit


def _refuse_constant(name: str) -> Any:
    raise _RefusedError(f"{name} is not a JSON number (RFC 8259 6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise _RefusedError("a number too large for a 64-bit float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _RefusedError("duplicate key in an object")  # which one, not echoed: it is input
    return out


def _encodable(doc: Any) -> bool:
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """`APIRouter(route_class=StrictJSONRoute)`: the router's routes read JSON bodies strictly."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """422 `{"detail": {"field": "events.0.user_id", "reason": "..."}}` for the first error (and how
    many more there are); `field` drops the location's source (`body`, `query`, ...) unless the
    whole body is at fault. The input is never echoed."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ("body",), "msg": "invalid request"}
    reason = str(first.get("msg", "invalid"))
    if first.get("type") == "json_invalid":
        ctx: dict[str, Any] = first.get("ctx") or {}
        field, reason = "body", f"invalid JSON: {ctx.get('error', 'unreadable')}"
    else:
        field = error_field(tuple(first.get("loc", ("body",))))
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more)"
    return JSONResponse({"detail": {"field": field, "reason": reason}}, 422)


async def http_failed(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own HTTP errors in the same shape: a path no route matches (`/items/a%0Ab`: the
    `path` converter does not cross a newline) is a 404 `{"detail": "Not Found"}` otherwise, outside the
    documented schema. HTTPExceptions raised with a `{"field", "reason"}` detail pass unchanged."""
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    detail = exc.detail if isinstance(exc.detail, dict) else {"field": None, "reason": str(exc.detail)}
    return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)


def error_field(loc: tuple[Any, ...]) -> str:
    """`("body", "events", 0, "user_id")` -> `events.0.user_id`; `("body",)` -> `body`."""
    if len(loc) > 1 and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    return ".".join(str(part) for part in loc)
