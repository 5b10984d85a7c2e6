"""One model's serving bundle (`Components`): the user model, the catalogue and its index, the RAG
context. The service starts with a cold-start bundle when no model is trained yet (content vectors and
popularity, `build_cold_start`) and swaps in the trained one (`build_components`) when it is ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.data import RecDataset
from recdata import load_dataset
from retrieval.catalog import (
    INDEXED_FIELDS,
    ITEMS,
    Catalogue,
    ContentItemVectors,
    ModelItemVectors,
    build_item_index,
    index_vectors,
    item_payloads,
    items_collection,
    read_payloads,
)
from retrieval.context import ContextStore, ContextWeights, build_context_index, build_entries, context_collection
from retrieval.engines import make_engine
from retrieval.index import IndexEngine
from retrieval.user_models import COLD_START_VERSION, ContentUserModel, GenerativeUserModel, UserModel
from service.settings import Settings
from training.checkpoint import load_serving_checkpoint
from training.text_embeddings import TextEncoder


class NotReadyError(RuntimeError):
    """A dependency the service cannot serve without is missing (no checkpoint, no index)."""


@dataclass
class Components:
    model: UserModel
    catalogue: Catalogue
    context: ContextStore | None = None
    title_vectors: np.ndarray | None = None  # (N, 384) RAG queries per item, embedded once at startup
    base_model: LLM4RecRef | None = None  # the trained model adapters are fitted to; None: no adapters
    engine: IndexEngine | None = None  # closed when this bundle is retired
    context_name: str = ""  # the RAG collection of the trained model's dataset (`collections`)
    recommended: set[int] = field(default_factory=set)  # items ever recommended: the coverage gauge

    @property
    def model_version(self) -> str:
        return self.model.version

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


@dataclass(frozen=True)
class LLM4RecRef:
    """What the adapter watcher checks an adapter against: the trained model's dimensions."""

    dim: int
    trained_items: int


def build_components(settings: Settings, text: TextEncoder, context: bool = True,
                     engine: IndexEngine | None = None, build_context: bool = True) -> Components:  # fmt: skip
    """The trained model's bundle (`context`: with RAG, when enabled; `build_context` False: only when its
    collection exists already; `engine`: the serving bundle's own, to share: an embedded index folder
    opens once per process); raises NotReadyError without a checkpoint (or index, when the settings
    forbid building it here)."""
    if not (settings.model_dir / "model.safetensors").is_file():
        raise NotReadyError(f"no checkpoint at {settings.model_dir}; run `llm4rec train --out {settings.model_dir}`")
    ck = load_serving_checkpoint(settings.model_dir, settings.cache_dir)
    engine = engine or make_engine(settings.index.location, _secret(settings))
    items_name, context_name = collections(ck.version, ck.meta)
    items = engine.open(items_name)
    if items is None:
        if not settings.index.build_if_missing:
            raise NotReadyError(f"no item index for this model at {settings.index.location}; run `llm4rec index build`")
        items = build_item_index(engine, ck.model, ck.data, ck.train.popularity(), items_name)  # minutes, with bars
    vectors = index_vectors(ck.model)
    source = ModelItemVectors(ck.model, ck.train, settings.cache_dir)
    catalogue = Catalogue(ck.data, items, vectors, read_payloads(items, ck.data.num_items), source)
    c = Components(
        model=GenerativeUserModel(ck.model, ck.version),
        catalogue=catalogue,
        base_model=LLM4RecRef(ck.model.config.fusion.dim, int(ck.model.log_pop.shape[0])),
        engine=engine,
        context_name=context_name,
    )
    if not (context and settings.rag.enabled):
        return c
    if not build_context and engine.open(context_name) is None:
        return c  # embedded later, while serving (`ServiceState.build_missing_context`)
    return with_context(c, settings, text)


def collections(version: str, meta: Mapping[str, Any]) -> tuple[str, str]:
    """A checkpoint's item collection and its dataset's RAG collection (`version`, `meta`: the
    checkpoint's, e.g. `checkpoint_version`, `read_checkpoint_meta`)."""
    return items_collection(version), context_collection(meta["fingerprint"])


def with_context(c: Components, settings: Settings, text: TextEncoder) -> Components:
    """The same bundle with RAG context (eq. 7-10): its engine's context collection (built here when
    missing) and every item's title embedded once as its RAG query."""
    assert c.engine is not None, "a trained bundle owns its index engine"
    index = c.engine.open(c.context_name)
    if index is None:  # first start on this dataset: every entry
        index = build_context_index(c.engine, build_entries(c.catalogue.data), text, c.context_name)
    r = settings.rag
    rag = ContextStore(index, text, ContextWeights(l1=r.l1, l2=r.l2, l3=r.l3, sigma_days=r.sigma_days))
    return replace(c, context=rag, title_vectors=text(c.catalogue.titles))


def build_cold_start(settings: Settings, text: TextEncoder | None, data: RecDataset | None = None) -> Components:
    """Before any model is trained: items as text-encoder vectors of their content (`text`; None:
    popularity alone, built in seconds without loading the encoder), users as the mean of their
    history's vectors, popularity from the dataset (`data`: already loaded); in memory."""
    data = data or load_dataset(settings.cold_start.dataset)
    pop = np.bincount(data.interactions.item, minlength=data.num_items).astype(np.float64)
    source = ContentItemVectors(text)
    vectors = source.grow(data, np.zeros((0, 0), np.float32))
    vectors[:, -1] = np.log1p(pop)
    engine = make_engine(":memory:")
    index = engine.create(ITEMS, vectors.shape[1], INDEXED_FIELDS)
    payloads = item_payloads(data, pop)
    index.upsert(list(range(data.num_items)), vectors, payloads)
    catalogue = Catalogue(data, index, vectors, payloads, source)
    version = f"{COLD_START_VERSION}:{'content' if text is not None else 'popularity'}"
    return Components(ContentUserModel(catalogue, settings.cold_start.gamma, version), catalogue, engine=engine)


def _secret(settings: Settings) -> str | None:
    return settings.index.api_key.get_secret_value() if settings.index.api_key else None
