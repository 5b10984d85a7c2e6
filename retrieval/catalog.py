"""The item catalogue in the index: fused item vectors plus the popularity coordinate, and payloads.

An indexed point is `[v_i, log(1 + pop_i)]` and a query is `[u, gamma]`, so the index's dot product is
LLM4Rec's serving score `u . v_i + gamma * log(1 + pop_i)` (PDA's adjusted inference, paper eq. 15);
gamma = 0 is the full do(popularity) intervention. New items (cold start) get content-only vectors:
their id has no trained embedding, so fusion builds them from text, categories and numbers alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from models.data import CategoricalField, RecDataset
from models.llm4rec import LLM4Rec
from models.scoring import TrainData
from retrieval.index import IndexEngine, Payload, VectorIndex
from training.features import FeatureOptions, item_inputs, item_texts

ITEMS = "items"


def items_collection(model_version: str) -> str:
    """The item collection of one trained model: a retrained model (same index location, same item ids)
    gets its own, and never serves another model's vectors."""
    return f"{ITEMS}-{model_version}"


CORRECTION_TOLERANCE = 0.01
INDEXED_FIELDS = {"categories": "keyword", "year": "float"}


def index_vectors(model: LLM4Rec, ids: np.ndarray | None = None) -> np.ndarray:
    """(N, D + 1) float32: fused item vectors with log(1 + training popularity) appended."""
    items, _ = model.item_vectors()
    pop = model.log_pop
    if pop.shape[0] < items.shape[0]:  # items added after training have no popularity
        pop = torch.cat([pop, pop.new_zeros(items.shape[0] - pop.shape[0])])
    out = torch.cat([items, pop.unsqueeze(1)], dim=1).numpy()
    return out if ids is None else out[ids]


def item_payloads(data: RecDataset, popularity: np.ndarray, ids: Sequence[int] | None = None) -> list[Payload]:
    """What serving and explanations read about an item, without another lookup."""
    titles = data.titles()
    year = data.item_numerical.get("year")
    last = np.full(data.num_items, -1, np.int64)
    np.maximum.at(last, data.interactions.item, data.interactions.timestamp)
    out = []
    for i in range(data.num_items) if ids is None else ids:
        pop = int(popularity[i]) if i < len(popularity) else 0
        p: Payload = {"item_id": data.item_ids[i], "title": titles[i], "categories": list(data.aspects(i)),
                      "popularity": pop}  # fmt: skip
        if year is not None and not np.isnan(year[i]):
            p["year"] = float(year[i])
        if last[i] >= 0:
            p["last_interaction"] = int(last[i])
        out.append(p)
    return out


def build_item_index(engine: IndexEngine, model: LLM4Rec, data: RecDataset, popularity: np.ndarray, name: str,
                     batch_size: int = 1024, progress: bool = True) -> VectorIndex:  # fmt: skip
    """Embed, upsert in batches, then publish: readers switch to the new version in one step."""
    vectors = index_vectors(model)
    index = engine.create(name, vectors.shape[1], INDEXED_FIELDS)
    payloads = item_payloads(data, popularity)  # once: it scans the whole interaction log
    for lo in tqdm(range(0, len(vectors), batch_size), desc="index items", disable=not progress):
        ids = list(range(lo, min(lo + batch_size, len(vectors))))
        index.upsert(ids, vectors[ids], payloads[lo : ids[-1] + 1])
    engine.publish(name, index)
    return index


@dataclass(frozen=True)
class NewItem:
    """A catalogue item that arrived after training."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()
    year: float | None = None
    text: str = ""  # further description, e.g. tags


def add_items(data: RecDataset, new: Sequence[NewItem]) -> RecDataset:
    """The dataset with `new` appended as items without interactions. Category values the model has no
    embedding for are dropped (the vocabulary is fixed at training time)."""
    n, m = data.num_items, len(new)
    text = {name: col + tuple(_text_of(it, name) for it in new) for name, col in data.item_text.items()}
    cats = {name: _extend_field(f, [it.categories for it in new]) for name, f in data.item_categorical.items()}
    numerical = {
        name: np.concatenate([col, np.full(m, np.nan, np.float32)]) for name, col in data.item_numerical.items()
    }
    if "year" in numerical:
        numerical["year"][n:] = [np.nan if it.year is None else it.year for it in new]
    return replace(data, item_ids=data.item_ids + tuple(it.item_id for it in new), item_text=text,
                   item_categorical=cats, item_numerical=numerical)  # fmt: skip


def _text_of(item: NewItem, column: str) -> str:
    return item.title if column == "title" else item.text


def _extend_field(f: CategoricalField, values: list[tuple[str, ...]]) -> CategoricalField:
    code = {v: j for j, v in enumerate(f.vocab)}
    rows = [[code[v] for v in vs if v in code] for vs in values]
    indptr = np.concatenate([f.indptr, f.indptr[-1] + np.cumsum([len(r) for r in rows])]).astype(np.int64)
    indices = np.concatenate([f.indices, np.array([j for r in rows for j in r], np.int64)])
    return CategoricalField(f.vocab, indptr, indices)


def extend_model(model: LLM4Rec, data: RecDataset, train: TrainData, cache_dir: Path) -> TrainData:
    """Swap `data`'s (grown) catalogue into the model; returns the training data widened to it."""
    trained_items = model.log_pop.shape[0]
    wide = TrainData(train.log, train.num_users, data.num_items)
    opts = FeatureOptions(text=model.items.text is not None, categorical=bool(model.items.categorical),
                          numerical=model.items.numerical is not None, cache_dir=cache_dir, progress=False,
                          reference_items=trained_items)  # fmt: skip
    model.set_items(item_inputs(data, wide, opts))
    return wide


class ItemVectors(Protocol):
    """Where a catalogue's indexed vectors come from: `grow` returns (N, D + 1) float32 for every item
    of the grown dataset (popularity coordinate last), leaving the rows of items already served as
    they were."""

    def grow(self, data: RecDataset, served: np.ndarray) -> np.ndarray: ...


@dataclass
class ModelItemVectors:
    """A trained LLM4Rec's fused vectors; new items get content-only ones (their id has no embedding)."""

    model: LLM4Rec
    train: TrainData
    cache_dir: Path

    def grow(self, data: RecDataset, served: np.ndarray) -> np.ndarray:
        self.train = extend_model(self.model, data, self.train, self.cache_dir)
        self.model.item_vectors()  # fill the model's vector cache here, not in the next request
        return index_vectors(self.model)


@dataclass
class ContentItemVectors:
    """Before any model is trained: the text encoder's vectors of the items' text (the same strings the
    model's text modality reads, so both share the embedding cache), popularity as the last coordinate.
    Without an encoder every item gets a zero content part: popularity alone, available at once."""

    encode: Callable[[list[str]], np.ndarray] | None  # texts -> (n, d) unit rows

    def grow(self, data: RecDataset, served: np.ndarray) -> np.ndarray:
        n = len(served)
        texts = item_texts(data)[n:]
        if not texts:
            return served
        content = self.encode(texts) if self.encode is not None else np.zeros((len(texts), 1), np.float32)
        rows = np.concatenate([content, np.zeros((len(texts), 1), np.float32)], axis=1)
        return np.concatenate([served, rows]).astype(np.float32) if n else rows.astype(np.float32)


@dataclass
class Catalogue:
    """The served items: the dataset they come from, their vectors as indexed, the index's payloads and
    the index itself. The one place items are added (POST /items, the replay of its log at start-up).

    An addition builds every table a request reads before the index can return a new id, and replaces
    the id map last: a concurrent request sees either the old catalogue or the whole new one."""

    data: RecDataset
    index: VectorIndex
    vectors: np.ndarray  # (N, D + 1) as indexed: item vector plus the popularity coordinate
    payloads: list[Payload]  # (N,) the index's payloads, read once: searches skip converting them
    source: ItemVectors
    served: np.ndarray = field(init=False)  # (N, D + 1) as the index holds them now: with the learner's corrections
    item_index: dict[str, int] = field(init=False)  # external item id -> internal id
    titles: list[str] = field(init=False)
    aspects: list[tuple[str, ...]] = field(init=False)  # per item: its categorical values (genres)
    unit_vectors: np.ndarray = field(init=False)  # (N, D) item vectors scaled to unit length: cosines

    def __post_init__(self) -> None:
        self._derive(self.data)
        self.item_index = {x: i for i, x in enumerate(self.data.item_ids)}
        self.served = self.vectors.copy()
        self._lock = threading.Lock()  # additions and corrections both write the index and `served`

    def _derive(self, data: RecDataset) -> None:
        self.titles = list(data.titles())
        self.aspects = [data.aspects(i) for i in range(data.num_items)]
        self.unit_vectors = unit_rows(self.vectors[:, :-1])

    def add(self, new: Sequence[NewItem]) -> list[str]:
        """Content-only vectors for the items of `new` not yet served, then the index; returns their ids."""
        new = [it for it in new if it.item_id not in self.item_index]
        if not new:
            return []
        grown = add_items(self.data, new)
        ids = list(range(self.data.num_items, grown.num_items))
        vectors = self.source.grow(grown, self.vectors)
        payloads = item_payloads(grown, np.zeros(0), ids)
        with self._lock:
            self.vectors, self.data, self.payloads = vectors, grown, self.payloads + payloads
            self.served = np.concatenate([self.served, vectors[len(self.served) :]])
            self._derive(grown)
            self.index.upsert(ids, vectors[ids], payloads)
            self.item_index = {**self.item_index, **{grown.item_ids[i]: i for i in ids}}
        return [grown.item_ids[i] for i in ids]

    def correct(self, rows: Callable[[np.ndarray, dict[str, int]], np.ndarray],
                tolerance: float = CORRECTION_TOLERANCE) -> int:  # fmt: skip
        """Write the learner's corrected rows (`rows(vectors, item_index)`: (N, D + 1) from the base rows) into the
        index where they differ from what it holds by more than `tolerance` in any coordinate; returns
        how many points were upserted. Decay moves every popularity a little all the time: the tolerance
        bounds how stale a point may get without rewriting the catalogue on every version."""
        with self._lock:
            new = rows(self.vectors, self.item_index)
            changed = np.flatnonzero(np.abs(new - self.served).max(axis=1) > tolerance)
            for lo in range(0, len(changed), 1024):
                ids = changed[lo : lo + 1024]
                self.index.upsert(ids.tolist(), new[ids], [self.payloads[i] for i in ids])
                self.served[ids] = new[ids]
        return len(changed)


def read_payloads(index: VectorIndex, n: int, chunk: int = 2048) -> list[Payload]:
    """Payloads of points 0..n-1 as the index holds them (immutable: additions only insert)."""
    out: list[Payload] = []
    for lo in range(0, n, chunk):
        got = index.retrieve(range(lo, min(lo + chunk, n)))
        out += [got.get(i, {}) for i in range(lo, min(lo + chunk, n))]
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)
    return out
