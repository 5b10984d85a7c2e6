"""The FastAPI app: `create_app` reads settings, builds the state in the lifespan and mounts the routes
(service.routes) and the error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.adapter_store import AdapterStore
from common.process import freeze_startup_objects
from service.metrics import Metrics
from service.middleware import RequestContext
from service.routes import router
from service.settings import Settings
from service.spool import SpoolError
from service.state import ServiceState, build_state
from service.strict_json import http_failed, validation_failed

log = structlog.get_logger()


def create_app(settings: Settings | None = None, adapter_store: AdapterStore | None = None,
               on_started: Callable[[ServiceState], Awaitable[None]] | None = None) -> FastAPI:  # fmt: skip
    """adapter_store: where adapters come from; default Redis when configured, else an in-process
    store (the embedded learner publishes into the one it is given). on_started: run with the state
    before the first request is taken (the embedded learner subscribes there, so it sees every event)."""
    settings = settings or Settings()
    if settings.production and (settings.api.key is None or settings.adapter.signing_key is None):
        raise ValueError("production mode needs RECSYS_API__KEY and RECSYS_ADAPTER__SIGNING_KEY")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = state = await build_state(settings, metrics, adapter_store)
        if on_started is not None:
            await on_started(state)
        freeze_startup_objects()
        yield
        await state.close()

    app = FastAPI(title="LLM4Rec", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.api.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_failed)
    app.add_exception_handler(SpoolError, spool_failed)
    app.add_exception_handler(Exception, unexpected)
    app.include_router(router)
    return app


async def spool_failed(request: Request, exc: Exception) -> JSONResponse:
    log.error("spool_failed", error=str(exc))
    return JSONResponse({"detail": {"field": None, "reason": "feedback could not be made durable; retry"}}, 503)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request_failed")  # the trace goes to the log, never to the client
    return JSONResponse({"detail": {"field": None, "reason": "internal error"}}, 500)
