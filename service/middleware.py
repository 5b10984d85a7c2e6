"""One pure-ASGI middleware for what every request needs: a request id (header and log context), the
body-size limit (413), and the request counter and latency histogram by route template. Pure ASGI
rather than `@app.middleware("http")`: the latter wraps every response in a stream, which costs more
than the whole template-explained recommendation on this machine's budget."""

from __future__ import annotations

import json
import random
import time

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

SCOPE_KEY = "llm4rec.request_id"
MAX_REQUEST_ID = 128


class BodyTooLargeError(Exception):
    pass


def request_id(request: Request) -> str:
    """The request's id: the client's `X-Request-ID` when it sent a usable one, else ours; the same
    value goes back in the header, into every log line and into the answer's body."""
    rid: str = request.scope.get(SCOPE_KEY) or new_request_id()
    return rid


def new_request_id() -> str:
    # not uuid4: its getrandom syscall releases the GIL, and under load the event loop then waits a
    # whole switch interval for worker threads to hand it back (seen in the soak's profile)
    return f"{random.getrandbits(128):032x}"


def _client_id(raw: bytes) -> str | None:
    """A client's id is kept if it is 1-128 printable ASCII characters (it travels in headers and logs)."""
    text = raw.decode("latin-1")
    return text if 0 < len(text) <= MAX_REQUEST_ID and text.isascii() and text.isprintable() else None


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = _client_id(headers.get(b"x-request-id", b"")) or new_request_id()
        scope[SCOPE_KEY] = rid
        status, over, replaced, seen = 500, False, False, 0
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, replaced
            if replaced:
                return
            if over and message["type"] == "http.response.start":
                # the body overflowed while the app read it; whatever it answers (a parse error), 413 wins
                replaced = True
                message = _too_large(self.max_body)[0]
                await send({**message, "headers": [*message["headers"], (b"x-request-id", rid.encode())]})
                await send(_too_large(self.max_body)[1])
                status = 413
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        async def limited() -> Message:
            """Counts streamed bytes too: a chunked body has no content-length to check up front."""
            nonlocal over, seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    over = True
                    raise BodyTooLargeError
            return message

        with structlog.contextvars.bound_contextvars(request_id=rid):
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                over = True
                await send_with_id({"type": "http.response.start", "status": 413, "headers": []})
            else:
                try:
                    await self.app(scope, limited, send_with_id)
                except BodyTooLargeError:
                    await send_with_id({"type": "http.response.start", "status": 413, "headers": []})
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _too_large(limit: int) -> tuple[Message, Message]:
    body = json.dumps({"detail": {"field": "body", "reason": f"body larger than {limit} bytes"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http.response.start", "status": 413, "headers": headers}, {"type": "http.response.body",
                                                                                "body": body}  # fmt: skip
