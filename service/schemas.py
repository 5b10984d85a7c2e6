"""The REST service's wire models: what the routes accept and answer (pydantic, validated at the
boundary; everything below works on plain dataclasses)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from common.events import MAX_TIMESTAMP, ExternalId, FeedbackEvent
from retrieval.catalog import NewItem
from service.recommender import Query, Result
from service.strict_json import Strict


class FiltersIn(Strict):
    categories: list[str] = Field(default_factory=list, max_length=50)
    year_min: float | None = Field(None, ge=0, le=3000)
    year_max: float | None = Field(None, ge=0, le=3000)
    exclude_item_ids: list[ExternalId] = Field(default_factory=list, max_length=1000)


class ContextIn(Strict):
    timestamp: int | None = Field(None, ge=0, le=MAX_TIMESTAMP)


class DebiasIn(Strict):
    gamma: float = Field(ge=-10, le=10)


class DiversityIn(Strict):
    weight: float = Field(alias="lambda", ge=0, le=1)


class RecommendIn(Strict):
    user_id: ExternalId
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


class ClientEvent(FeedbackEvent):
    """A feedback event as a client sends it: `served` is the service's to set (a client's vector
    would be trained on as if the service had served it), so sending one is a 422."""

    served: SkipJsonSchema[None] = None


class FeedbackIn(Strict):
    events: list[ClientEvent] = Field(min_length=1, max_length=1000)


class ItemIn(Strict):
    item_id: ExternalId
    title: str = Field(min_length=1, max_length=500)
    categories: list[str] = Field(default_factory=list, max_length=50)
    year: float | None = Field(None, ge=0, le=3000)
    text: str = Field("", max_length=5000)


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)

    def to_new_items(self) -> list[NewItem]:
        return [NewItem(i.item_id, i.title, tuple(i.categories), i.year, i.text) for i in self.items]


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


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give, 422 in our shape rather than FastAPI's."""
    text = {401: "missing or wrong API key", 404: "unknown id", 413: "body too large",
            422: "invalid request: the field and the reason", 429: "rate limited", 500: "internal error",
            503: "not durable, retry"}  # fmt: skip
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


class FeedbackOut(BaseModel):
    accepted: int
    duplicates: int
    published: bool  # every accepted event acknowledged by Kafka (or the in-process sink) before answering


class ItemsOut(BaseModel):
    added: list[str]
    existing: list[str]


def result_out(r: Result) -> RecommendOut:
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
