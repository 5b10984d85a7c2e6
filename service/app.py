"""The FastAPI app: thin routes over `Recommender`. `create_app` reads settings and builds the
components in the lifespan; routes only validate, map and answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
import structlog
import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from common.adapter_store import AdapterStore, MemoryAdapterStore, RedisAdapterStore
from common.events import ID_PATTERN, MAX_TIMESTAMP, FeedbackEvent
from common.process import freeze_startup_objects
from models.adapter import ServingAdapter
from retrieval.catalog import NewItem
from retrieval.history import dataset_histories
from service.adapters import AdapterWatcher
from service.components import Components, add_items_live, build_components
from service.feedback import (
    EventSink,
    FeedbackIngest,
    Forwarder,
    InProcessSink,
    KafkaEventSink,
    MemoryDeduper,
    RedisDeduper,
)
from service.llm_explain import bundled_gguf, make_explainer
from service.llm_rerank import LlamaCppReranker, Reranker
from service.metrics import Metrics
from service.middleware import RequestContext
from service.ratelimit import TokenBuckets, retry_after
from service.recommender import Query, Recommender, Result
from service.settings import Settings
from service.spool import Spool, SpoolError

log = structlog.get_logger()
ID = Field(min_length=1, max_length=128, pattern=ID_PATTERN)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    categories: list[str] = Field(default_factory=list, max_length=50)
    year_min: float | None = Field(None, ge=0, le=3000)
    year_max: float | None = Field(None, ge=0, le=3000)
    exclude_item_ids: list[str] = Field(default_factory=list, max_length=1000)


class ContextIn(Strict):
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP)


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


class FeedbackIn(Strict):
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class ItemIn(Strict):
    item_id: str = ID
    title: str = Field(min_length=1, max_length=500)
    categories: list[str] = Field(default_factory=list, max_length=50)
    year: float | None = Field(None, ge=0, le=3000)
    text: str = Field("", max_length=5000)


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class EvidenceOut(BaseModel):
    kind: Literal["aspect", "item", "context"]
    id: str
    label: str
    score: float


class ExplanationOut(BaseModel):
    type: Literal["preference", "similarity", "context"]
    text: str
    weights: dict[str, float]
    evidence: list[EvidenceOut]


class ItemOut(BaseModel):
    item_id: str
    score: float
    rank: int
    title: str | None
    categories: list[str]
    year: float | None
    explanation: ExplanationOut | None = None


class RecommendOut(BaseModel):
    request_id: str
    model_version: str
    adapter_version: int
    cold_start: bool
    degraded: bool
    gamma: float
    items: list[ItemOut]


class ErrorDetail(BaseModel):
    field: str | None
    reason: str


class ErrorOut(BaseModel):
    detail: ErrorDetail


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (422 is documented by FastAPI)."""
    text = {401: "missing or wrong API key", 404: "unknown id", 413: "body too large", 429: "rate limited",
            500: "internal error", 503: "not durable, retry"}  # fmt: skip
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


class FeedbackOut(BaseModel):
    accepted: int
    duplicates: int
    published: bool  # every accepted event acknowledged by Kafka (or the in-process sink) before answering


class ItemsOut(BaseModel):
    added: list[str]
    existing: list[str]


def _result_out(r: Result) -> RecommendOut:
    items = []
    for it in r.items:
        p, e = it.payload, it.explanation
        explanation = None if e is None else ExplanationOut(
            type=e.type, text=e.text, weights=e.weights,
            evidence=[EvidenceOut(kind=x.kind, id=x.id, label=x.label, score=x.score) for x in e.evidence],
        )  # fmt: skip
        items.append(ItemOut(item_id=it.item_id, score=round(it.score, 6), rank=it.rank, title=p.get("title"),
                             categories=p.get("categories", []), year=p.get("year"),
                             explanation=explanation))  # fmt: skip
    return RecommendOut(request_id=r.request_id, model_version=r.model_version, adapter_version=r.adapter_version,
                        cold_start=r.cold_start, degraded=r.degraded, gamma=r.gamma, items=items)  # fmt: skip


def _observe(m: Metrics, c: Components, r: Result) -> None:
    for stage, seconds in r.stages.items():
        m.stage.labels(stage).observe(seconds)
    if r.cold_start:
        m.cold_start.inc()
    if r.degraded:
        m.dependency_errors.labels("history").inc()
    if not r.items:
        return
    m.recommended_items.inc(len(r.items))
    ids = [c.item_index[it.item_id] for it in r.items]
    c.recommended.update(ids)
    m.recommended_coverage.set(len(c.recommended) / max(len(c.item_index), 1))
    m.recommended_popularity.set(float(np.mean([it.payload.get("popularity", 0) for it in r.items])))
    if len(r.items) > 1:
        unit = c.unit_vectors[ids]
        n = len(r.items)
        m.recommended_diversity.set(1.0 - float(((unit @ unit.T).sum() - n) / (n * (n - 1))))


def _reranker(settings: Settings) -> Reranker:
    return LlamaCppReranker(settings.rerank.gguf_path or bundled_gguf())


def _sink(settings: Settings) -> EventSink:
    k = settings.kafka
    if k.bootstrap_servers:
        return KafkaEventSink(k.bootstrap_servers, k.topic, k.request_timeout_ms)
    return InProcessSink()


def _adapter_watcher(settings: Settings, c: Components, store: AdapterStore | None, metrics: Metrics) -> AdapterWatcher:
    a = settings.adapter
    if store is None:
        store = RedisAdapterStore(c.redis, a.prefix, a.keep) if c.redis is not None else MemoryAdapterStore(a.keep)
    model = c.checkpoint.model
    shapes = ServingAdapter.shapes(model.config.fusion.dim, int(model.log_pop.shape[0]), a.rank)
    return AdapterWatcher(store, a.key(), c.model_version, shapes, metrics, a.poll_s)


def create_app(settings: Settings | None = None, components: Components | None = None,
               adapter_store: AdapterStore | None = None) -> FastAPI:  # fmt: skip
    """adapter_store: where adapters come from; default Redis when configured, else an in-process
    store (the embedded learner publishes into the one it is given)."""
    settings = settings or Settings()
    if settings.production and (settings.api.key is None or settings.adapter.signing_key is None):
        raise ValueError("production mode needs RECSYS_API__KEY and RECSYS_ADAPTER__SIGNING_KEY")
    metrics = Metrics()
    key = settings.api.key.get_secret_value().encode() if settings.api.key else None
    buckets = TokenBuckets(settings.api.write_rate_per_s, settings.api.write_burst)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # requests run small matrix products: one torch thread each beats two threads fighting over 2 cores
        torch.set_num_threads(settings.torch_threads)
        c = await anyio.to_thread.run_sync(build_components, settings) if components is None else components
        replayed = await anyio.to_thread.run_sync(_replay_added_items, c, settings)
        seeded = await _seed(c)
        explainer = await anyio.to_thread.run_sync(make_explainer, settings.explain, c, metrics)
        sink = _sink(settings)
        spool = Spool(settings.feedback.spool_dir)
        forwarder = Forwarder(spool, sink, metrics)
        f = settings.feedback
        deduper = RedisDeduper(c.redis, f.dedupe_prefix, f.dedupe_ttl_s, metrics) if c.redis else MemoryDeduper()
        app.state.components, app.state.sink, app.state.forwarder = c, sink, forwarder
        reranker = await anyio.to_thread.run_sync(_reranker, settings) if settings.rerank.enabled else None
        watcher = _adapter_watcher(settings, c, adapter_store, metrics)
        await watcher.refresh()
        app.state.adapters = watcher
        app.state.recommender = Recommender(c, explainer, reranker=reranker, rerank_pool=settings.rerank.pool,
                                            adapters=watcher)  # fmt: skip
        app.state.feedback = FeedbackIngest(spool, forwarder, deduper, c.history, metrics, f.ack_wait_s)
        app.state.items_lock = asyncio.Lock()
        tasks = [asyncio.create_task(forwarder.run()),
                 asyncio.create_task(watcher.run(c.redis, settings.adapter.prefix))]  # fmt: skip
        freeze_startup_objects()
        log.info("service_started", model_version=c.model_version, items=c.items.count(), users_seeded=seeded,
                 items_replayed=replayed,
                 sink=sink.name, spool_pending=spool.pending, explainer=explainer.name)  # fmt: skip
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sink.close()
        await explainer.close()
        await c.close()

    app = FastAPI(title="LLM4Rec", version="0.1.0", lifespan=lifespan)
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=settings.api.max_body_bytes)

    async def require_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
        if key is not None and not hmac.compare_digest((x_api_key or "").encode(), key):
            raise HTTPException(401, detail={"field": "X-API-Key", "reason": "missing or wrong API key"})
        caller = x_api_key or (request.client.host if request.client else "unknown")
        wait = buckets.take(hashlib.sha256(caller.encode()).hexdigest())  # never keep keys in memory as given
        if wait > 0:
            metrics.rate_limited.inc()
            raise HTTPException(429, detail={"field": None, "reason": "write rate limit exceeded"},
                                headers={"Retry-After": retry_after(wait)})  # fmt: skip

    write = [Depends(require_key)]

    @app.exception_handler(SpoolError)
    async def spool_failed(request: Request, exc: SpoolError) -> JSONResponse:
        log.error("spool_failed", error=str(exc))
        return JSONResponse({"detail": {"field": None, "reason": "feedback could not be made durable; retry"}}, 503)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request_failed")  # the trace goes to the log, never to the client
        return JSONResponse({"detail": {"field": None, "reason": "internal error"}}, 500)

    @app.post("/recommend", response_model=RecommendOut, responses=_errors(413))
    async def recommend(body: RecommendIn, request: Request) -> Response:
        result = await request.app.state.recommender.recommend(body.to_query())
        _observe(metrics, request.app.state.components, result)
        # documented by response_model, built as that model, serialised once: returning the model itself
        # made FastAPI dump it and validate it again on the event loop
        return Response(_result_out(result).model_dump_json(), media_type="application/json")

    @app.post("/feedback", status_code=202, dependencies=write, responses=_errors(401, 413, 429, 503))
    async def feedback(body: FeedbackIn, request: Request) -> FeedbackOut:
        r = await request.app.state.feedback.ingest(body.events)
        return FeedbackOut(accepted=r.accepted, duplicates=r.duplicates, published=r.published)

    @app.post("/items", dependencies=write, responses=_errors(401, 413, 429))
    async def add_items(body: ItemsIn, request: Request) -> ItemsOut:
        new = [NewItem(i.item_id, i.title, tuple(i.categories), i.year, i.text) for i in body.items]
        async with request.app.state.items_lock:  # one catalogue growth at a time
            added = await anyio.to_thread.run_sync(add_items_live, request.app.state.components, new,
                                                   settings.cache_dir)  # fmt: skip
            await anyio.to_thread.run_sync(
                _log_added_items, settings.added_items_log, [i for i in new if i.item_id in added]
            )
        metrics.items_upserted.inc(len(added))
        return ItemsOut(added=added, existing=[i.item_id for i in new if i.item_id not in set(added)])

    @app.get("/items/{item_id}", responses=_errors(404))
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
            fw: Forwarder = request.app.state.forwarder
            deps["events"] = f"{fw.sink.name} {'ok' if fw.healthy else 'unreachable'}, {fw.spool.pending} spooled"
            deps["explainer"] = request.app.state.recommender.explainer.name
            deps["adapter"] = f"version {request.app.state.adapters.current.version}"
        # Kafka down does not make the service unready: feedback spools and recommendations still work
        ready = c is not None and deps.get("history") != "unreachable"
        response.status_code = 200 if ready else 503
        return {"ready": ready, "dependencies": deps, "model_version": c.model_version if c else None}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics = metrics
    return app


def _log_added_items(path: Path, items: list[NewItem]) -> None:
    """The index keeps added items across restarts but the model does not: this log lets the next
    start rebuild their content vectors in the same order (so the same internal ids)."""
    if not items:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(dataclasses.asdict(i)) + "\n" for i in items)
        f.flush()
        os.fsync(f.fileno())


def _replay_added_items(c: Components, settings: Settings) -> int:
    path = settings.added_items_log
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    items = [NewItem(r["item_id"], r["title"], tuple(r["categories"]), r["year"], r["text"]) for r in rows]
    return len(add_items_live(c, items, settings.cache_dir)) if items else 0


async def _seed(c: Components) -> int:
    try:
        return await c.history.seed(dataset_histories(c.checkpoint.data))
    except Exception as e:  # Redis down at startup: serve (cold start until it returns), do not crash
        log.warning("history_seed_failed", error=str(e))
        return 0


async def _redis_state(c: Components) -> str:
    assert c.redis is not None
    try:
        await c.redis.ping()
        return "redis ok"
    except Exception:  # any connection failure means the same thing to a probe
        return "unreachable"
