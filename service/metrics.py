"""The service's Prometheus metrics: `recsys_*` names, base units, no user or item id labels. One
registry per app (tests build many apps in one process; a global registry would reject the second)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from cachetools import TTLCache
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from common.events import FeedbackEvent
    from service.components import Components
    from service.recommender import Result

# request latency: fine below 20 ms (the target), coarse above
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("recsys_http_requests_total", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("recsys_http_request_duration_seconds", "Whole-request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.stage = Histogram("recsys_recommend_stage_duration_seconds", "Latency of each /recommend stage",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.explainer_latency = Histogram("recsys_explainer_duration_seconds", "Wording latency per request",
                                           ["backend"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.explainer_fallbacks = Counter("recsys_explainer_fallbacks_total",
                                           "LLM explanations replaced by the template text",
                                           ["backend", "reason"], registry=r)  # fmt: skip
        self.cold_start = Counter("recsys_cold_start_total", "Cold-start lists served", registry=r)
        self.recommended_popularity = Gauge("recsys_recommended_popularity",
                                            "Mean training popularity of the last list served", registry=r)  # fmt: skip
        self.recommended_diversity = Gauge("recsys_recommended_diversity",
                                           "Intra-list diversity (1 - mean cosine) of the last list served",
                                           registry=r)  # fmt: skip
        self.recommended_coverage = Gauge("recsys_recommended_coverage", "Catalogue share recommended since start",
                                          registry=r)  # fmt: skip
        self.recommended_items = Counter("recsys_recommended_items_total", "Items recommended", registry=r)
        self.feedback_accepted = Counter("recsys_feedback_accepted_total", "Feedback events accepted (durable)",
                                         registry=r)  # fmt: skip
        self.feedback_duplicates = Counter("recsys_feedback_duplicates_total",
                                           "Feedback events dropped as already accepted", registry=r)  # fmt: skip
        self.feedback_spooled = Counter("recsys_feedback_spooled_total",
                                        "Events answered while still waiting in the spool", registry=r)  # fmt: skip
        self.feedback_published = Counter("recsys_feedback_published_total", "Events acknowledged by the sink",
                                          registry=r)  # fmt: skip
        self.feedback_replayed = Counter("recsys_feedback_replayed_total",
                                         "Events published while catching up a backlog", registry=r)  # fmt: skip
        self.feedback_sink_errors = Counter("recsys_feedback_sink_errors_total", "Failed sink publishes",
                                            registry=r)  # fmt: skip
        self.feedback_spool_pending = Gauge("recsys_feedback_spool_pending", "Events in the spool not yet published",
                                            registry=r)  # fmt: skip
        self.feedback_sink_up = Gauge("recsys_feedback_sink_up", "1 while the event sink acknowledges", registry=r)
        self.dependency_errors = Counter("recsys_dependency_errors_total", "Failures of Redis, history or index",
                                         ["dependency"], registry=r)  # fmt: skip
        self.adapter_version = Gauge("recsys_adapter_version", "Adapter version being served", registry=r)
        self.adapter_swaps = Counter("recsys_adapter_swaps_total", "Adapter hot swaps", registry=r)
        self.items_corrected = Counter("recsys_items_corrected_total",
                                       "Index points rewritten with learnt item rows", registry=r)  # fmt: skip
        self.adapter_rejections = Counter("recsys_adapter_rejections_total", "Adapters refused, by reason",
                                          ["reason"], registry=r)  # fmt: skip
        self.rate_limited = Counter("recsys_rate_limited_total", "Write requests refused with 429", registry=r)
        self.items_upserted = Counter("recsys_items_upserted_total", "Items added through POST /items", registry=r)
        self.served_lists = Counter("recsys_served_lists_total", "Non-empty lists served, by model version and "
                                    "whether an adapter was applied", ["model", "adapter"], registry=r)  # fmt: skip
        self.served_list_hits = Counter("recsys_served_list_hits_total", "Served lists with a later positive "
                                        "event of their user on one of their items", ["model", "adapter"],
                                        registry=r)  # fmt: skip
        self.feedback_sink_up.set(1)
        self.extra: list[CollectorRegistry] = []  # other components' registries served with this one

    def also_serve(self, registry: CollectorRegistry) -> None:
        """Serve another registry on this /metrics too (the embedded learner's)."""
        self.extra.append(registry)

    def exposition(self) -> bytes:
        """The Prometheus text format of this registry and the extra ones."""
        return b"".join(generate_latest(r) for r in (self.registry, *self.extra))

    def observe_recommendation(self, r: Result, c: Components) -> None:
        """Stage latencies and what the list says about bias: popularity, diversity, coverage."""
        for stage, seconds in r.stages.items():
            self.stage.labels(stage).observe(seconds)
        if r.cold_start:
            self.cold_start.inc()
        if r.degraded:
            self.dependency_errors.labels("history").inc()
        if not r.items:
            return
        self.recommended_items.inc(len(r.items))
        ids = [c.catalogue.item_index[it.item_id] for it in r.items]
        c.recommended.update(ids)
        self.recommended_coverage.set(len(c.recommended) / max(len(c.catalogue.payloads), 1))
        self.recommended_popularity.set(float(np.mean([it.payload.get("popularity", 0) for it in r.items])))
        if len(r.items) > 1:
            unit = c.catalogue.unit_vectors[ids]
            n = len(r.items)
            self.recommended_diversity.set(1.0 - float(((unit @ unit.T).sum() - n) / (n * (n - 1))))


REMEMBER_S = 3600.0  # a click an hour after the list is no longer about it
REMEMBER_LISTS = 200_000


@dataclass
class ServedList:
    user: str
    items: frozenset[str]
    model: str
    adapted: str  # "on" / "off": was an adapter applied
    hit: bool = False


@dataclass
class OnlineHitRate:
    """Whether what the service learns helps, seen in production: each served list is remembered for a
    while, and a later positive event of its user on one of its items counts the list as hit (once).
    Feedback joins its list by the `request_id` it carries (the answer's, echoed back by the client),
    else the user's latest list. Lists and hits are counted per model version and per whether an adapter
    was applied; the rolling hit rate is their ratio over a window (the dashboard's "Online hit rate").
    Adapter version numbers are not labels: the learner publishes several a minute, each a new series."""

    metrics: Metrics
    by_request: TTLCache[str, ServedList] = field(default_factory=lambda: TTLCache(REMEMBER_LISTS, REMEMBER_S))
    by_user: TTLCache[str, ServedList] = field(default_factory=lambda: TTLCache(REMEMBER_LISTS, REMEMBER_S))

    def served(self, user: str, r: Result) -> None:
        if not r.items:
            return
        adapted = "on" if r.adapter_version > 0 else "off"
        served = ServedList(user, frozenset(it.item_id for it in r.items), r.model_version, adapted)
        self.by_request[r.request_id] = self.by_user[user] = served
        self.metrics.served_lists.labels(served.model, adapted).inc()

    def feedback(self, events: Sequence[FeedbackEvent]) -> None:
        for e in events:
            if not e.is_positive:
                continue
            served = self.by_request.get(e.request_id) if e.request_id else self.by_user.get(e.user_id)
            if served is not None and not served.hit and served.user == e.user_id and e.item_id in served.items:
                served.hit = True
                self.metrics.served_list_hits.labels(served.model, served.adapted).inc()
