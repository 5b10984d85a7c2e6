"""The item catalogue in the index: fused item vectors plus the popularity coordinate, and payloads.

An indexed point is `[v_i, log(1 + pop_i)]` and a query is `[u, gamma]`, so the index's dot product is
LLM4Rec's serving score `u . v_i + gamma * log(1 + pop_i)` (PDA's adjusted inference, paper eq. 15);
gamma = 0 is the full do(popularity) intervention. New items (cold start) get content-only vectors:
their id has no trained embedding, so fusion builds them from text, categories and numbers alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.data import CategoricalField, RecDataset
from models.llm4rec import LLM4Rec
from models.scoring import TrainData
from retrieval.index import IndexEngine, Payload, VectorIndex
from training.features import FeatureOptions, item_inputs

ITEMS = "items"
INDEXED_FIELDS = {"categories": "keyword", "year": "float"}


def index_vectors(model: LLM4Rec, ids: np.ndarray | None = None) -> np.ndarray:
    """(N, D + 1) float32: fused item vectors with log(1 + training popularity) appended."""
    items, _ = model.item_vectors()
    pop = model.log_pop
    if pop.shape[0] < items.shape[0]:  # items added after training have no popularity
        pop = torch.cat([pop, pop.new_zeros(items.shape[0] - pop.shape[0])])
    out = torch.cat([items, pop.unsqueeze(1)], dim=1).numpy()
    return out if ids is None else out[ids]


@torch.inference_mode()
def user_vector(model: LLM4Rec, history: Sequence[int]) -> np.ndarray:
    """(D,) the generative user model's state after the user's history (internal ids, oldest first)."""
    model.eval()
    return model.user_vectors(torch.tensor([list(history)], dtype=torch.long))[0].numpy()


def query_vector(user: np.ndarray, gamma: float) -> np.ndarray:
    """user: (D,) -> (D + 1,) so that the index ranks by u . v + gamma * log(1 + pop)."""
    return np.append(user, np.float32(gamma)).astype(np.float32)


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


def build_item_index(engine: IndexEngine, model: LLM4Rec, data: RecDataset, popularity: np.ndarray,
                     name: str = ITEMS, batch_size: int = 1024, progress: bool = True) -> VectorIndex:  # fmt: skip
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


def upsert_new_items(index: VectorIndex, model: LLM4Rec, data: RecDataset, train: TrainData,
                     new: Sequence[NewItem], cache_dir: Path) -> tuple[RecDataset, list[int]]:  # fmt: skip
    """Cold start: content -> fused vector -> index, on the live index. Returns the grown dataset and
    the new items' internal ids."""
    grown = add_items(data, new)
    extend_model(model, grown, train, cache_dir)
    ids = list(range(data.num_items, grown.num_items))
    index.upsert(ids, index_vectors(model, np.array(ids)), item_payloads(grown, np.zeros(0), ids))
    return grown, ids
