"""The HTTP routes: validate (service.schemas), call the serving objects in `ServiceState`, map the
answer. No serving logic here."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from common.events import ExternalId
from service.middleware import request_id
from service.ratelimit import retry_after
from service.schemas import (
    FeedbackIn,
    FeedbackOut,
    ItemsIn,
    ItemsOut,
    RecommendIn,
    RecommendOut,
    errors,
    result_out,
)
from service.state import ItemsNotDurableError, ServiceState, add_items, get_state
from service.strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)
State = Annotated[ServiceState, Depends(get_state)]


async def require_key(state: State, request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Write endpoints: the API key when one is configured, then the caller's token bucket."""
    key = state.settings.api.key
    if key is not None and not hmac.compare_digest((x_api_key or "").encode(), key.get_secret_value().encode()):
        raise HTTPException(401, detail={"field": "X-API-Key", "reason": "missing or wrong API key"})
    caller = x_api_key or (request.client.host if request.client else "unknown")
    wait = state.write_buckets.take(hashlib.sha256(caller.encode()).hexdigest())  # never keep keys as given
    if wait > 0:
        state.metrics.rate_limited.inc()
        raise HTTPException(429, detail={"field": None, "reason": "write rate limit exceeded"},
                            headers={"Retry-After": retry_after(wait)})  # fmt: skip


WRITE = [Depends(require_key)]


@router.post("/recommend", response_model=RecommendOut, responses=errors(413, 422))
async def recommend(body: RecommendIn, state: State, request: Request) -> Response:
    recommender = state.recommender  # one model for the whole request, even across a swap
    result = await recommender.recommend(body.to_query(), request_id(request))
    state.metrics.observe_recommendation(result, recommender.c)
    state.online.served(body.user_id, result)
    # documented by response_model, built as that model, serialised once: returning the model itself
    # made FastAPI dump it and validate it again on the event loop
    return Response(result_out(result).model_dump_json(), media_type="application/json")


@router.post("/feedback", status_code=202, dependencies=WRITE, responses=errors(401, 413, 422, 429, 503))
async def feedback(body: FeedbackIn, state: State) -> FeedbackOut:
    r = await state.feedback.ingest(state.recommender.logged(body.events))
    state.online.feedback(body.events)
    return FeedbackOut(accepted=r.accepted, duplicates=r.duplicates, published=r.published)


@router.post("/items", dependencies=WRITE, responses=errors(401, 413, 422, 429, 503))
async def post_items(body: ItemsIn, state: State) -> ItemsOut:
    new = body.to_new_items()
    try:
        added = await add_items(state, new)
    except ItemsNotDurableError as e:
        raise HTTPException(503, detail={"field": None, "reason": "items could not be made durable; retry"}) from e
    state.metrics.items_upserted.inc(len(added))
    return ItemsOut(added=added, existing=[i.item_id for i in new if i.item_id not in set(added)])


@router.get("/items/{item_id:path}", responses=errors(404, 422))
async def get_item(item_id: ExternalId, state: State) -> dict[str, Any]:
    catalogue = state.recommender.c.catalogue
    internal = catalogue.item_index.get(item_id)
    if internal is None:
        raise HTTPException(404, detail={"field": "item_id", "reason": "unknown item"})
    return catalogue.payloads[internal]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _local_history(state: ServiceState) -> str:
    """Where a deployment without Redis keeps users' histories: on disk (they survive a restart) or not."""
    folder = state.settings.state_dir
    return "memory (lost on restart)" if folder is None else f"on disk ({folder})"


@router.get("/readyz")
async def readyz(state: State, response: Response) -> dict[str, Any]:
    c, fw = state.recommender.c, state.forwarder
    deps = {
        "model": c.model.version.replace(":", " ") if c.model.cold_start else "trained",
        "index": f"{len(c.catalogue.payloads)} items",
        "history": _local_history(state) if state.redis is None else await _redis_state(state),
        "events": f"{fw.sink.name} {'ok' if fw.healthy else 'unreachable'}, {fw.spool.pending} spooled",
        "explainer": state.recommender.explainer.name,
        "context": "ready" if c.context is not None else "off",
    }  # fmt: skip
    adapters = state.recommender.adapters
    deps["adapter"] = f"version {adapters.current.version}" if adapters is not None else "none"
    # Kafka down does not make the service unready: feedback spools and recommendations still work
    ready = deps["history"] != "unreachable"
    response.status_code = 200 if ready else 503
    return {"ready": ready, "dependencies": deps, "model_version": c.model_version, "cold_start": c.model.cold_start,
            "building": state.serving.building or None}  # fmt: skip


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(state: State) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _redis_state(state: ServiceState) -> str:
    assert state.redis is not None
    try:
        await state.redis.ping()
        return "redis ok"
    except Exception:  # any connection failure means the same thing to a probe
        return "unreachable"
