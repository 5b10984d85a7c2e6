"""Everything the service process needs, built once at startup (`build_components`) and passed down."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from redis.asyncio import Redis

from retrieval.catalog import ITEMS, NewItem, add_items, build_item_index, extend_model, index_vectors, item_payloads
from retrieval.context import CONTEXT, ContextStore, ContextWeights, build_context_index, build_entries
from retrieval.engines import make_engine
from retrieval.history import HistoryStore, MemoryHistoryStore, RedisHistoryStore
from retrieval.index import IndexEngine, Payload, VectorIndex
from service.settings import Settings
from training.experiment import OpenedCheckpoint, checkpoint_version, open_checkpoint
from training.text_embeddings import TextEncoder


class NotReadyError(RuntimeError):
    """A dependency the service cannot serve without is missing (no checkpoint, no index)."""


@dataclass
class Components:
    checkpoint: OpenedCheckpoint
    items: VectorIndex
    context: ContextStore | None
    history: HistoryStore
    redis: Redis | None
    vectors: np.ndarray  # (N, D + 1) as indexed: fused vector plus the popularity coordinate
    payloads: list[Payload]  # (N,) the index's payloads, read once: searches skip converting them
    item_index: dict[str, int]  # external item id -> internal id
    aspects: list[tuple[str, ...]]  # per item: its categorical values (genres)
    titles: list[str]
    model_version: str
    engine: IndexEngine | None = None  # closed at shutdown
    title_vectors: np.ndarray | None = None  # (N, 384) RAG queries per item, embedded once at startup
    recommended: set[int] = field(default_factory=set)  # items ever recommended: the coverage gauge
    unit_vectors: np.ndarray = field(init=False)  # (N, D) fused vectors scaled to unit length: cosines

    def __post_init__(self) -> None:
        self.unit_vectors = unit_rows(self.vectors[:, :-1])

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        if self.engine is not None:
            self.engine.close()

    @property
    def learned_gamma(self) -> float:
        g = self.checkpoint.model.serve_gamma
        return float(self.checkpoint.model.gamma.detach()) if g is None else float(g)


def add_items_live(c: Components, new: Sequence[NewItem], cache_dir: Path) -> list[str]:
    """Cold start on the running service: content-only vectors for `new` (ids not in the catalogue),
    then the index. Every table a request reads grows before the index can return a new id, and the
    id map last, so a concurrent request sees either the old catalogue or the whole new one."""
    new = [it for it in new if it.item_id not in c.item_index]
    if not new:
        return []
    ck = c.checkpoint
    grown = add_items(ck.data, new)
    wide = extend_model(ck.model, grown, ck.train, cache_dir)
    ck.model.item_vectors()  # fill the model's vector cache here, not in the next request
    ids = list(range(ck.data.num_items, grown.num_items))
    vectors = index_vectors(ck.model)
    if c.context is not None:
        c.title_vectors = c.context.embed(list(grown.titles()))
    c.titles = list(grown.titles())
    c.aspects = [grown.aspects(i) for i in range(grown.num_items)]
    payloads = item_payloads(grown, np.zeros(0), ids)
    c.vectors, c.unit_vectors = vectors, unit_rows(vectors[:, :-1])
    c.payloads = c.payloads + payloads
    c.checkpoint = replace(ck, data=grown, train=wide)
    c.items.upsert(ids, vectors[ids], payloads)
    c.item_index = {**c.item_index, **{grown.item_ids[i]: i for i in ids}}
    return [grown.item_ids[i] for i in ids]


def build_components(settings: Settings) -> Components:
    if not (settings.model_dir / "model.safetensors").is_file():
        raise NotReadyError(f"no checkpoint at {settings.model_dir}; run `llm4rec train --out {settings.model_dir}`")
    ck = open_checkpoint(settings.model_dir, settings.cache_dir)
    key = settings.index.api_key.get_secret_value() if settings.index.api_key else None
    engine = make_engine(settings.index.location, key)
    items = engine.open(ITEMS)
    if items is None:
        if not settings.index.build_if_missing:
            raise NotReadyError(f"no item index at {settings.index.location}; run `llm4rec index build`")
        items = build_item_index(engine, ck.model, ck.data, ck.train.popularity())  # first start: minutes, with bars
    data = ck.data
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    context = _context_store(settings, engine, ck) if settings.rag.enabled else None
    return Components(
        checkpoint=ck,
        items=items,
        context=context,
        title_vectors=context.embed(list(data.titles())) if context else None,
        history=RedisHistoryStore(redis, settings.history_prefix, settings.history_len)
        if redis
        else MemoryHistoryStore(settings.history_len),
        redis=redis,
        vectors=index_vectors(ck.model),
        payloads=index_payloads(items, data.num_items),
        item_index={x: i for i, x in enumerate(data.item_ids)},
        aspects=[data.aspects(i) for i in range(data.num_items)],
        titles=list(data.titles()),
        model_version=checkpoint_version(settings.model_dir),
        engine=engine,
    )


def index_payloads(index: VectorIndex, n: int, chunk: int = 2048) -> list[Payload]:
    """Payloads of points 0..n-1 as the index holds them (immutable: POST /items only inserts)."""
    out: list[Payload] = []
    for lo in range(0, n, chunk):
        got = index.retrieve(range(lo, min(lo + chunk, n)))
        out += [got.get(i, {}) for i in range(lo, min(lo + chunk, n))]
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    return out


def _context_store(settings: Settings, engine: IndexEngine, ck: OpenedCheckpoint) -> ContextStore:
    embed = TextEncoder(settings.cache_dir, progress=True)  # in memory; first start embeds every entry
    index = engine.open(CONTEXT)
    if index is None:
        index = build_context_index(engine, build_entries(ck.data), embed)
    r = settings.rag
    return ContextStore(index, embed, ContextWeights(l1=r.l1, l2=r.l2, l3=r.l3, sigma_days=r.sigma_days))
