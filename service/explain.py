"""Grounded explanations (paper eq. 19-25) and their wording.

Three candidate reasons per recommended item, each with a weight and the exact evidence behind it:
- preference (eq. 19-20): the item's aspects (genres) weighted by their share of the user's history;
- similarity (eq. 21-22): cosine between the item's fused vector and those of the user's history items;
- context (eq. 23-24): the best RAG context entry's eq. 10 score, normalised by l1 + l2 + l3.
The type with the largest weight is chosen (eq. 25). `TemplateExplainer` words it deterministically;
every other wording backend must say nothing the evidence does not hold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from retrieval.context import ScoredContext


@dataclass(frozen=True)
class Evidence:
    kind: str  # "aspect" | "item" | "context"
    id: str
    label: str
    score: float


@dataclass(frozen=True)
class Reason:
    type: str  # "preference" | "similarity" | "context"
    weight: float
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True)
class Explanation:
    type: str
    text: str
    evidence: tuple[Evidence, ...]
    weights: dict[str, float] = field(default_factory=dict)


def aspect_shares(history_aspects: Sequence[Sequence[str]]) -> dict[str, float]:
    """Each aspect's share of the user's history (eq. 19): computed once per request."""
    counts = Counter(a for aspects in history_aspects for a in aspects)
    total = max(sum(counts.values()), 1)
    return {a: n / total for a, n in counts.items()}


def preference_reason(item_aspects: Sequence[str], shares: dict[str, float]) -> Reason:
    ranked = sorted(((shares[a], a) for a in set(item_aspects) if a in shares), reverse=True)
    ev = tuple(Evidence("aspect", a, a, round(s, 4)) for s, a in ranked[:3])
    return Reason("preference", float(sum(s for s, _ in ranked)), ev)


def similarity_reason(cos: np.ndarray, history_ids: Sequence[str], history_titles: Sequence[str]) -> Reason:
    """cos: (H,) cosine between the item's fused vector and each history item's (eq. 21)."""
    if len(history_ids) == 0:
        return Reason("similarity", 0.0, ())
    first = int(np.argmax(cos))  # the two most similar, first-seen wins ties (argsort per item was a hotspot)
    rest = cos.copy()
    rest[first] = -np.inf
    top = [first] if len(cos) == 1 else [first, int(np.argmax(rest))]
    ev = tuple(Evidence("item", history_ids[i], history_titles[i], round(float(cos[i]), 4)) for i in top)
    return Reason("similarity", float(max(cos[top[0]], 0.0)), ev)


def context_reason(entries: Sequence[ScoredContext], weight_sum: float) -> Reason:
    if not entries:
        return Reason("context", 0.0, ())
    ev = tuple(Evidence("context", f"{c.kind}:{c.item}:{c.timestamp}", c.text, round(c.score, 4)) for c in entries)
    return Reason("context", float(entries[0].score / max(weight_sum, 1e-9)), ev)


def choose(reasons: Sequence[Reason]) -> Reason:
    """Eq. 25: the reason with the largest weight (ties: preference, similarity, context order)."""
    return max(reasons, key=lambda r: r.weight)


@dataclass(frozen=True)
class ToWord:
    """One recommended item's chosen reason, to be put into words."""

    title: str
    aspects: tuple[str, ...]  # the item's own categories: facts a wording may state
    reason: Reason


class Explainer(Protocol):
    """Words the chosen reasons of all items of one request (one call, so an LLM backend can batch)."""

    name: str

    async def word(self, items: Sequence[ToWord]) -> list[str]: ...

    async def close(self) -> None: ...


class TemplateExplainer:
    name = "template"

    async def word(self, items: Sequence[ToWord]) -> list[str]:
        return [template_text(it.title, it.reason) for it in items]

    async def close(self) -> None:
        return None


def template_text(title: str, r: Reason) -> str:
    labels = [e.label for e in r.evidence]
    if r.type == "preference" and r.evidence:
        parts = [f"{e.label} ({e.score:.0%} of your history)" for e in r.evidence]
        return f"{title} matches genres you watch often: {', '.join(parts)}."
    if r.type == "similarity" and r.evidence:
        return f"{title} is close to {' and '.join(labels)}, which you watched."
    if r.type == "context" and r.evidence:
        return f"About {title}: {r.evidence[0].label}"
    return f"{title} is popular with viewers like you."
