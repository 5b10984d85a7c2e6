"""The FastAPI app: thin routes over `Recommender`. `create_app` reads settings and builds the
components in the lifespan; routes only validate, map and answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.components import Components, build_components, dataset_histories
from service.explain import TemplateExplainer
from service.recommender import Query, Recommender, Result
from service.settings import Settings

log = structlog.get_logger()
ID = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    categories: list[str] = Field(default_factory=list, max_length=50)
    year_min: float | None = Field(None, ge=0, le=3000)
    year_max: float | None = Field(None, ge=0, le=3000)
    exclude_item_ids: list[str] = Field(default_factory=list, max_length=1000)


class ContextIn(Strict):
    timestamp: int | None = Field(None, ge=0, le=32_503_680_000)  # before year 3000


class DebiasIn(Strict):
    gamma: float = Field(ge=-10, le=10)


class DiversityIn(Strict):
    weight: float = Field(alias="lambda", ge=0, le=1)


class RecommendIn(Strict):
    user_id: str = ID
    k: int = Field(10, ge=1, le=100)
    filters: FiltersIn | None = None
    exclude_seen: bool = True
    explain: bool = True
    context: ContextIn | None = None
    debias: DebiasIn | None = None
    diversity: DiversityIn | None = None

    def to_query(self) -> Query:
        f = self.filters or FiltersIn()
        return Query(
            self.user_id, self.k, tuple(f.categories), f.year_min, f.year_max, tuple(f.exclude_item_ids),
            self.exclude_seen, self.explain, self.context.timestamp if self.context else None,
            self.debias.gamma if self.debias else None, self.diversity.weight if self.diversity else 0.0,
        )  # fmt: skip


def _result_json(r: Result) -> dict[str, Any]:
    items = []
    for it in r.items:
        p = it.payload
        out: dict[str, Any] = {
            "item_id": it.item_id, "score": round(it.score, 6), "rank": it.rank,
            "title": p.get("title"), "categories": p.get("categories", []), "year": p.get("year"),
        }  # fmt: skip
        if it.explanation is not None:
            e = it.explanation
            out["explanation"] = {"type": e.type, "text": e.text, "weights": e.weights,
                                  "evidence": [vars(x) for x in e.evidence]}  # fmt: skip
        items.append(out)
    return {"request_id": r.request_id, "model_version": r.model_version, "adapter_version": 0,
            "cold_start": r.cold_start, "gamma": r.gamma, "items": items}  # fmt: skip


def create_app(settings: Settings | None = None, components: Components | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        c = await anyio.to_thread.run_sync(build_components, settings) if components is None else components
        seeded = await c.history.seed(dataset_histories(c.checkpoint))
        app.state.components = c
        app.state.recommender = Recommender(c, TemplateExplainer())
        log.info("service_started", model_version=c.model_version, items=c.items.count(), users_seeded=seeded)
        yield
        if c.redis is not None:
            await c.redis.aclose()

    app = FastAPI(title="LLM4Rec", version="0.1.0", lifespan=lifespan)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(request_id=rid):
            response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    @app.post("/recommend")
    async def recommend(body: RecommendIn, request: Request) -> dict[str, Any]:
        result = await request.app.state.recommender.recommend(body.to_query())
        return _result_json(result)

    @app.get("/items/{item_id}")
    async def get_item(item_id: str, request: Request) -> dict[str, Any]:
        c: Components = request.app.state.components
        internal = c.item_index.get(item_id)
        payload = c.items.retrieve([internal]).get(internal) if internal is not None else None
        if payload is None:
            raise HTTPException(404, detail={"field": "item_id", "reason": f"unknown item {item_id!r}"})
        return payload

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        c: Components | None = getattr(request.app.state, "components", None)
        deps: dict[str, str] = {"model": "loaded" if c else "missing"}
        if c is not None:
            deps["index"] = f"{c.items.count()} items"
            deps["history"] = "memory" if c.redis is None else await _redis_state(c)
        ready = c is not None and deps.get("history") != "unreachable"
        response.status_code = 200 if ready else 503
        return {"ready": ready, "dependencies": deps, "model_version": c.model_version if c else None}

    return app


async def _redis_state(c: Components) -> str:
    assert c.redis is not None
    try:
        await c.redis.ping()
        return "redis ok"
    except Exception:  # any connection failure means the same thing to a probe
        return "unreachable"
