"""RAG context store (paper eq. 7-10): facts about items, built from the dataset itself, embedded with
the same sentence encoder as item text and kept in a second Qdrant collection.

Entry kinds, each with the time it describes and a support count from the data:
- description: title, year, genres (and user tags where the dataset has them); support = ratings;
- ratings: how many users rated the item, and how well, in one calendar year; support = raters;
- similar: "users who watched A also watched B"; support = users who did both.

Retrieval scores an entry for a query by
    s = l1 * cos(q, e) + l2 * exp(-(t_now - t_e)^2 / (2 sigma^2)) + l3 * credibility_e
with credibility = log(1 + support) / log(1 + max support of that kind), so an entry backed by many
users outranks an anecdote, and a recent one outranks a stale one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from models.data import RecDataset
from retrieval.index import Filters, IndexEngine, Payload, VectorIndex

CONTEXT = "context"


def context_collection(dataset_fingerprint: str) -> str:
    """The RAG collection of one dataset (its entries depend on the data alone, so a retrained model on
    the same data shares it, and a model on other data never reads it)."""
    return f"{CONTEXT}-{dataset_fingerprint}"


Embed = Callable[[list[str]], np.ndarray]  # texts -> (n, d) unit-norm rows
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class ContextEntry:
    item: int  # internal id of the item the entry is about
    kind: str
    text: str
    timestamp: int
    support: int
    genres: tuple[str, ...]


@dataclass(frozen=True)
class ContextWeights:
    l1: float = 1.0  # similarity
    l2: float = 0.3  # temporal decay
    l3: float = 0.3  # credibility
    sigma_days: float = 365.0
    candidates: int = 64  # nearest entries re-scored per query


@dataclass(frozen=True)
class ScoredContext:
    text: str
    item: int
    kind: str
    score: float
    similarity: float
    recency: float
    credibility: float
    timestamp: int


def build_entries(data: RecDataset, similar_per_item: int = 3, min_raters: int = 3) -> list[ContextEntry]:
    genres = [data.aspects(i) for i in range(data.num_items)]
    inter = data.interactions
    last = np.zeros(data.num_items, np.int64)
    np.maximum.at(last, inter.item, inter.timestamp)
    counts = np.bincount(inter.item, minlength=data.num_items)
    return (_descriptions(data, genres, last, counts) + _yearly_ratings(data, genres, min_raters)
            + _similar(data, genres, last, similar_per_item))  # fmt: skip


def _descriptions(data: RecDataset, genres: list[tuple[str, ...]], last: np.ndarray, counts: np.ndarray
                  ) -> list[ContextEntry]:  # fmt: skip
    year = data.item_numerical.get("year")
    tags = data.item_text.get("tags")
    titles = data.titles()
    out = []
    for i in range(data.num_items):
        text = titles[i] + (f" ({int(year[i])})" if year is not None and not np.isnan(year[i]) else "")
        text += f". Genres: {', '.join(genres[i])}." if genres[i] else "."
        text += f" Tagged by users: {tags[i]}." if tags and tags[i] else ""
        out.append(ContextEntry(i, "description", text, int(last[i]), int(counts[i]), genres[i]))
    return out


def _yearly_ratings(data: RecDataset, genres: list[tuple[str, ...]], min_raters: int) -> list[ContextEntry]:
    inter = data.interactions
    if inter.rating is None or len(inter) == 0:
        return []
    titles = data.titles()
    years = inter.timestamp.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
    out = []
    keys = np.stack([inter.item, years], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    n = np.bincount(inv)
    mean = np.bincount(inv, weights=inter.rating) / n
    latest = np.zeros(len(uniq), np.int64)
    np.maximum.at(latest, inv, inter.timestamp)
    for (item, yr), c, m, t in zip(uniq, n, mean, latest, strict=True):
        if c >= min_raters:
            text = f"In {yr}, {c} users rated {titles[int(item)]} {m:.1f} out of 5 on average."
            out.append(ContextEntry(int(item), "ratings", text, int(t), int(c), genres[int(item)]))
    return out


def _similar(data: RecDataset, genres: list[tuple[str, ...]], last: np.ndarray, per_item: int) -> list[ContextEntry]:
    inter = data.interactions
    x = sp.csr_matrix(
        (np.ones(len(inter), np.float32), (inter.item, inter.user)), shape=(data.num_items, data.num_users)
    )
    x.data[:] = 1.0  # repeated interactions count once
    co = (x @ x.T).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    titles = data.titles()
    out = []
    for a in range(data.num_items):
        row = co.getrow(a)
        for j in np.argsort(-row.data, kind="stable")[:per_item]:
            b, n = int(row.indices[j]), int(row.data[j])
            text = f"Users who watched {titles[a]} also watched {titles[b]} ({n} users did both)."
            out.append(ContextEntry(a, "similar", text, int(max(last[a], last[b])), n, genres[b]))
    return out


def _credibility(entries: Sequence[ContextEntry]) -> np.ndarray:
    support = np.array([e.support for e in entries], np.float64)
    kinds = np.array([e.kind for e in entries])
    out = np.zeros(len(entries))
    for kind in set(kinds.tolist()):
        m = kinds == kind
        out[m] = np.log1p(support[m]) / max(np.log1p(support[m].max()), 1e-9)
    return out


def build_context_index(engine: IndexEngine, entries: Sequence[ContextEntry], embed: Embed, name: str,
                        batch_size: int = 1024, progress: bool = True) -> VectorIndex:  # fmt: skip
    vectors = embed([e.text for e in entries])
    cred = _credibility(entries)
    index = engine.create(name, vectors.shape[1], {"item": "integer"})
    for lo in tqdm(range(0, len(entries), batch_size), desc="index context", disable=not progress):
        ids = list(range(lo, min(lo + batch_size, len(entries))))
        payloads: list[Payload] = [{"item": entries[i].item, "kind": entries[i].kind, "text": entries[i].text,
                                    "timestamp": entries[i].timestamp, "credibility": float(cred[i]),
                                    "genres": list(entries[i].genres)} for i in ids]  # fmt: skip
        index.upsert(ids, vectors[ids], payloads)
    engine.publish(name, index)
    return index


class ContextStore:
    """Top-K context entries per (user, item) query, scored by eq. 10."""

    def __init__(self, index: VectorIndex, embed: Embed, weights: ContextWeights = ContextWeights()) -> None:
        self.index, self.embed, self.weights = index, embed, weights

    def retrieve(self, query: str | np.ndarray, k: int, items: Sequence[int] = (),
                 t_now: int | None = None) -> list[ScoredContext]:  # fmt: skip
        """Entries about `items` (any item if empty) for the query (text, or its embedding), best first."""
        w = self.weights
        q = self.embed([query])[0] if isinstance(query, str) else query
        hits = self.index.search(q, max(k, w.candidates), Filters(item_ids=tuple(items)) if items else None)
        now = time.time() if t_now is None else t_now
        sigma = w.sigma_days * SECONDS_PER_DAY
        scored = []
        for h in hits:
            p = h.payload
            recency = float(np.exp(-((now - p["timestamp"]) ** 2) / (2 * sigma**2)))
            s = w.l1 * h.score + w.l2 * recency + w.l3 * p["credibility"]
            scored.append(ScoredContext(p["text"], p["item"], p["kind"], s, h.score, recency, p["credibility"],
                                        p["timestamp"]))  # fmt: skip
        return sorted(scored, key=lambda c: -c.score)[:k]
