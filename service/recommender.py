"""The serving path, free of HTTP: history -> user vector -> index -> optional MMR -> explanations.

Known users: the generative user model reads their current history (so feedback posted a moment ago
counts), the index ranks by u . v + gamma * log(1 + pop) with the request's gamma (do(popularity),
eq. 15), seen items excluded. Users without history get a cold-start list: the catalogue's mean content
direction plus popularity, marked `cold_start`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import structlog

from retrieval.catalog import query_vector, user_vector
from retrieval.index import Filters, Hit
from service.components import Components
from service.explain import (
    Explainer,
    Explanation,
    Reason,
    ToWord,
    choose,
    context_reason,
    preference_reason,
    similarity_reason,
)
from service.llm_rerank import Reranker, promote

log = structlog.get_logger()


@dataclass(frozen=True)
class Query:
    user_id: str
    k: int = 10
    categories: tuple[str, ...] = ()
    year_min: float | None = None
    year_max: float | None = None
    exclude_item_ids: tuple[str, ...] = ()
    exclude_seen: bool = True
    explain: bool = True
    timestamp: int | None = None
    gamma: float | None = None  # None: the model's validated serving gamma
    diversity: float = 0.0  # MMR trade-off: 0 = pure relevance


@dataclass(frozen=True)
class Recommended:
    item_id: str
    score: float
    rank: int
    payload: dict[str, Any]
    explanation: Explanation | None


@dataclass(frozen=True)
class Result:
    request_id: str
    model_version: str
    cold_start: bool
    gamma: float
    items: list[Recommended]
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    degraded: bool = False  # a dependency failed and the answer is less personal than it should be


class Recommender:
    def __init__(self, c: Components, explainer: Explainer, mmr_pool: int = 4, reranker: Reranker | None = None,
                 rerank_pool: int = 20) -> None:  # fmt: skip
        self.c, self.explainer, self.mmr_pool = c, explainer, mmr_pool
        self.reranker, self.rerank_pool = reranker, rerank_pool
        self._cold_query = c.vectors[:, :-1].mean(0)

    async def recommend(self, q: Query) -> Result:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        try:
            recent = await self.c.history.recent(q.user_id, self.c.history.max_len)
            degraded = False
        except Exception as e:  # history store down: answer without personalisation rather than fail
            log.warning("history_unavailable", error=str(e))
            recent, degraded = [], True
        history = [self.c.item_index[i] for i, _ in recent if i in self.c.item_index]
        stages["history"] = time.perf_counter() - t
        gamma = self.c.learned_gamma if q.gamma is None else q.gamma
        hits = await anyio.to_thread.run_sync(self._retrieve, q, history, gamma, stages)
        t = time.perf_counter()
        explanations: list[Explanation | None] = [None] * len(hits)
        if q.explain and hits:
            explanations = list(await self._explain(q, hits, history))
        stages["explanation"] = time.perf_counter() - t
        items = [Recommended(str(h.payload["item_id"]), h.score, rank, h.payload, e)
                 for rank, (h, e) in enumerate(zip(hits, explanations, strict=True), start=1)]  # fmt: skip
        return Result(uuid.uuid4().hex, self.c.model_version, not history, gamma, items, stages, degraded)

    def _retrieve(self, q: Query, history: list[int], gamma: float, stages: dict[str, float]) -> list[Hit]:
        t = time.perf_counter()
        user = user_vector(self.c.checkpoint.model, history) if history else self._cold_query
        stages["user_encoding"] = time.perf_counter() - t
        t = time.perf_counter()
        excluded = {self.c.item_index[i] for i in q.exclude_item_ids if i in self.c.item_index}
        if q.exclude_seen:
            excluded.update(history)
        f = Filters(q.categories, q.year_min, q.year_max, frozenset(excluded))
        pool = q.k * self.mmr_pool if q.diversity > 0 else q.k
        if self.reranker is not None and history:
            pool = max(pool, self.rerank_pool)
        hits = self.c.items.search(query_vector(user, gamma), pool, f)
        stages["retrieval"] = time.perf_counter() - t
        t = time.perf_counter()
        if self.reranker is not None and history and hits:
            chosen = self.reranker.choose(
                [self.c.titles[i] for i in history[-10:]], [self.c.titles[h.id] for h in hits]
            )
            hits = [hits[i] for i in promote(list(range(len(hits))), chosen)]
        hits = self._mmr(hits, q.k, q.diversity) if q.diversity > 0 else hits[: q.k]
        stages["rerank"] = time.perf_counter() - t
        return hits

    def _mmr(self, hits: list[Hit], k: int, lam: float) -> list[Hit]:
        """Maximal marginal relevance (Carbonell & Goldstein 1998) over fused-vector cosine."""
        if not hits:
            return hits
        rel = np.array([h.score for h in hits])
        rel = (rel - rel.min()) / (np.ptp(rel) + 1e-9)
        unit = unit_rows(self.c.vectors[[h.id for h in hits], :-1])
        chosen: list[int] = []
        rest = list(range(len(hits)))
        while rest and len(chosen) < k:
            sim = (unit[rest] @ unit[chosen].T).max(1) if chosen else np.zeros(len(rest))
            best = rest[int(np.argmax((1 - lam) * rel[rest] - lam * sim))]
            chosen.append(best)
            rest.remove(best)
        return [hits[i] for i in chosen]

    async def _explain(self, q: Query, hits: list[Hit], history: list[int]) -> list[Explanation]:
        reasons = await anyio.to_thread.run_sync(self._reasons, q, hits, history)
        chosen = [choose(r) for r in reasons]
        texts = await self.explainer.word(
            [ToWord(self.c.titles[h.id], self.c.aspects[h.id], r) for h, r in zip(hits, chosen, strict=True)]
        )
        return [Explanation(ch.type, text, ch.evidence, {r.type: round(r.weight, 4) for r in rs})
                for ch, text, rs in zip(chosen, texts, reasons, strict=True)]  # fmt: skip

    def _reasons(self, q: Query, hits: list[Hit], history: list[int]) -> list[list[Reason]]:
        """Eq. 19-24 for every recommended item, in one worker-thread hop."""
        c = self.c
        recent = history[-50:]  # the evidence a reader can check: the newest part of the history
        recent_aspects = [c.aspects[i] for i in recent]
        recent_ids = [c.checkpoint.data.item_ids[i] for i in recent]
        recent_titles = [c.titles[i] for i in recent]
        out = []
        for h in hits:
            reasons = [
                preference_reason(c.aspects[h.id], recent_aspects),
                similarity_reason(c.vectors[h.id, :-1], c.vectors[recent, :-1], recent_ids, recent_titles),
            ]
            if c.context is not None:
                w = c.context.weights
                entries = c.context.retrieve(c.titles[h.id], k=3, items=[h.id], t_now=q.timestamp)
                reasons.append(context_reason(entries, w.l1 + w.l2 + w.l3))
            out.append(reasons)
        return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    return out
