"""The serving path, free of HTTP: history -> user vector -> index -> optional MMR -> explanations.

Known users: the generative user model reads their current history (so feedback posted a moment ago
counts), the index ranks by u . v + gamma * log(1 + pop) with the request's gamma (do(popularity),
eq. 15), seen items excluded. Users without history get a cold-start list: the catalogue's mean content
direction plus popularity, marked `cold_start`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import numpy as np
import structlog
from cachetools import TLRUCache

from common.events import FeedbackEvent, ServedUser
from models.adapter import AdapterView
from retrieval.context import ScoredContext
from retrieval.history import HistoryStore
from retrieval.index import Filters, Hit
from retrieval.user_models import UserVectors, query_vector
from service.adapters import AdapterWatcher
from service.components import Components
from service.explain import (
    Explainer,
    Explanation,
    Reason,
    ToWord,
    aspect_shares,
    choose,
    context_reason,
    preference_reason,
    similarity_reason,
)
from service.llm_rerank import Reranker, promote

log = structlog.get_logger()
CONTEXT_TTL_S = 600.0
CONTEXT_CACHE_SIZE = 100_000


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
    adapter_version: int = 0


def _context_expiry(_key: int, _value: object, now: float) -> float:
    # spread over +-20%: entries cached together at start-up would otherwise expire together
    return now + CONTEXT_TTL_S * random.uniform(0.8, 1.2)


class Recommender:
    """Serves one model's bundle; the service builds a new one when a trained model is swapped in."""

    def __init__(self, c: Components, history: HistoryStore, explainer: Explainer, mmr_pool: int = 4,
                 reranker: Reranker | None = None, rerank_pool: int = 20,
                 adapters: AdapterWatcher | None = None, user_refresh_every: int = 1) -> None:  # fmt: skip
        self.c, self.history, self.explainer, self.mmr_pool = c, history, explainer, mmr_pool
        self.reranker, self.rerank_pool, self.adapters = reranker, rerank_pool, adapters
        self.users = UserVectors(c.model, user_refresh_every)  # the learner encodes users the same way
        self._context_cache: TLRUCache[int, list[ScoredContext]] = TLRUCache(
            CONTEXT_CACHE_SIZE, _context_expiry, timer=time.monotonic
        )
        self._cold_query = c.catalogue.vectors[:, :-1].mean(0)
        self.active = 0  # requests in progress

    async def recommend(self, q: Query, request_id: str) -> Result:
        self.active += 1  # a retired Recommender closes its bundle only once no request holds it
        try:
            return await self._recommend(q, request_id)
        finally:
            self.active -= 1

    async def _recommend(self, q: Query, request_id: str) -> Result:
        stages: dict[str, float] = {}
        t = time.perf_counter()
        cat = self.c.catalogue
        try:
            recent = await self.history.recent(q.user_id, self.history.max_len)
            rejected = await self.history.rejected(q.user_id)
            degraded = False
        except Exception as e:  # history store down: answer without personalisation rather than fail
            log.warning("history_unavailable", error=str(e))
            recent, rejected, degraded = [], set(), True
        history = [cat.item_index[i] for i, _ in recent if i in cat.item_index]
        # what the user rejected never comes back, whatever the request says about seen items
        q = replace(q, exclude_item_ids=q.exclude_item_ids + tuple(rejected)) if rejected else q
        stages["history"] = time.perf_counter() - t
        gamma = self.c.model.learned_gamma if q.gamma is None else q.gamma
        adapter = self.adapters.current if self.adapters is not None else None  # one version for the request
        # on the event loop, not in a worker thread: the work holds the GIL nearly throughout (about 2 ms),
        # and handing it to a thread and back cost more than it overlapped. Measured at 200 requests/s:
        # 3.3 instead of 4.4 ms of CPU per request, p95 8 ms instead of 44 ms. The LLM re-rank (hundreds of
        # ms, off by default) still goes to a thread so it cannot stall the loop.
        args = (q, history, gamma, adapter, stages)
        if self.reranker is not None:
            hits, reasons = await anyio.to_thread.run_sync(self._retrieve_and_reason, *args)
        else:
            hits, reasons = self._retrieve_and_reason(*args)
        t = time.perf_counter()
        explanations: list[Explanation | None] = [None] * len(hits)
        if q.explain and hits:
            explanations = list(await self._explain(q, hits, reasons))
        stages["explanation"] += time.perf_counter() - t
        items = [Recommended(str(h.payload["item_id"]), h.score, rank, h.payload, e)
                 for rank, (h, e) in enumerate(zip(hits, explanations, strict=True), start=1)]  # fmt: skip
        version = adapter.version if adapter is not None else 0
        cold = self.c.model.cold_start or not history
        return Result(request_id, self.c.model.version, cold, gamma, items, stages, degraded, version)

    def logged(self, events: Sequence[FeedbackEvent]) -> list[FeedbackEvent]:
        """`events` with the user vector this service last served each one's user, when it still holds
        it (`ServedUser`; the learner checks that it fits the event before training on it)."""
        served: dict[str, ServedUser] = {}
        ids, version = self.c.catalogue.data.item_ids, self.c.model.version
        users = set() if self.c.model.cold_start else {e.user_id for e in events}
        for user in users:
            if (last := self.users.last(user)) is not None:
                served[user] = ServedUser.of(version, [ids[i] for i in last[0]], last[1].numpy())
        return [FeedbackEvent.model_construct(**{**dict(e), "served": served.get(e.user_id)}) for e in events]

    def _retrieve_and_reason(self, q: Query, history: list[int], gamma: float, adapter: AdapterView | None,
                             stages: dict[str, float]) -> tuple[list[Hit], list[list[Reason]]]:  # fmt: skip
        hits = self._retrieve(q, history, gamma, adapter, stages)
        t = time.perf_counter()
        reasons = self._reasons(q, hits, history) if q.explain and hits else []
        stages["explanation"] = time.perf_counter() - t
        return hits, reasons

    def _retrieve(self, q: Query, history: list[int], gamma: float, adapter: AdapterView | None,
                  stages: dict[str, float]) -> list[Hit]:  # fmt: skip
        t = time.perf_counter()
        cat = self.c.catalogue
        user = self.users([q.user_id], [history])[0].numpy() if history else self._cold_query
        if adapter is not None and history:
            user = adapter.user(user)  # the learner's low-rank correction of the user vector
        stages["user_encoding"] = time.perf_counter() - t
        t = time.perf_counter()
        excluded = {cat.item_index[i] for i in q.exclude_item_ids if i in cat.item_index}
        if q.exclude_seen:
            excluded.update(history)
        f = Filters(q.categories, q.year_min, q.year_max, frozenset(excluded))
        pool = q.k * self.mmr_pool if q.diversity > 0 else q.k
        if self.reranker is not None and history:
            pool = max(pool, self.rerank_pool)
        biased = adapter is not None and adapter.has_bias
        if biased:
            pool = max(pool, 2 * q.k)  # the per-item biases may lift items from just below the cut
        # an index can hold points the running model lacks (items added before a restart whose log was
        # lost): they cannot be scored or explained, so they are not served
        # payloads come from the service's copy: converting them on every query cost a quarter of the search
        payloads = cat.payloads
        found = cat.index.search(query_vector(user, gamma), pool, f, with_payload=False)
        hits = [Hit(h.id, h.score, payloads[h.id]) for h in found if h.id < len(payloads)]
        if biased:
            assert adapter is not None
            hits = _with_bias(hits, adapter.item_bias)
        stages["retrieval"] = time.perf_counter() - t
        t = time.perf_counter()
        if self.reranker is not None and history and hits:
            chosen = self.reranker.choose([cat.titles[i] for i in history[-10:]], [cat.titles[h.id] for h in hits])
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
        unit = self.c.catalogue.unit_vectors[[h.id for h in hits]]
        chosen: list[int] = []
        rest = list(range(len(hits)))
        while rest and len(chosen) < k:
            sim = (unit[rest] @ unit[chosen].T).max(1) if chosen else np.zeros(len(rest))
            best = rest[int(np.argmax((1 - lam) * rel[rest] - lam * sim))]
            chosen.append(best)
            rest.remove(best)
        return [hits[i] for i in chosen]

    async def _explain(self, q: Query, hits: list[Hit], reasons: list[list[Reason]]) -> list[Explanation]:
        chosen = [choose(r) for r in reasons]
        cat = self.c.catalogue
        texts = await self.explainer.word(
            [ToWord(cat.titles[h.id], cat.aspects[h.id], r) for h, r in zip(hits, chosen, strict=True)]
        )
        return [Explanation(ch.type, text, ch.evidence, {r.type: round(r.weight, 4) for r in rs})
                for ch, text, rs in zip(chosen, texts, reasons, strict=True)]  # fmt: skip

    def _reasons(self, q: Query, hits: list[Hit], history: list[int]) -> list[list[Reason]]:
        """Eq. 19-24 for every recommended item at once."""
        c = self.c.catalogue
        recent = history[-50:]  # the evidence a reader can check: the newest part of the history
        shares = aspect_shares([c.aspects[i] for i in recent])
        ids = [c.data.item_ids[i] for i in recent]
        titles = [c.titles[i] for i in recent]
        cos = c.unit_vectors[[h.id for h in hits]] @ c.unit_vectors[recent].T  # (K, H)
        w = self.c.context.weights if self.c.context is not None else None
        out = []
        for row, h in enumerate(hits):
            reasons = [preference_reason(c.aspects[h.id], shares), similarity_reason(cos[row], ids, titles)]
            if w is not None:
                reasons.append(context_reason(self._context(h.id, q.timestamp), w.l1 + w.l2 + w.l3))
            out.append(reasons)
        return out

    def _context(self, item: int, t_now: int | None) -> list[ScoredContext]:
        """RAG entries about one item. They do not depend on the user, so answers at the current time
        are cached for CONTEXT_TTL_S (their temporal term moves by days, not seconds)."""
        c = self.c
        assert c.context is not None
        title = c.catalogue.titles[item]
        query = title if c.title_vectors is None or item >= len(c.title_vectors) else c.title_vectors[item]
        if t_now is not None:
            return c.context.retrieve(query, k=3, items=[item], t_now=t_now)
        hit = self._context_cache.get(item)
        if hit is None:
            hit = self._context_cache[item] = c.context.retrieve(query, k=3, items=[item])
        return hit


def _with_bias(hits: list[Hit], bias: np.ndarray) -> list[Hit]:
    """The adapter's per-item score biases (items added after training have none), re-sorted."""
    out = [Hit(h.id, h.score + (float(bias[h.id]) if h.id < len(bias) else 0.0), h.payload) for h in hits]
    return sorted(out, key=lambda h: -h.score)
