"""Model inputs built from a dataset and its training split: item features for the fusion encoder,
popularity and activity counts for debiasing, sensitive groups for the fairness adversary."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.data import RecDataset
from models.fusion import ItemInputs
from models.scoring import TrainData
from training.text_embeddings import embed_texts

# Converter columns computed over the whole log; recomputed from the training split so the test
# period does not leak into item features.
_LOG_STATISTICS = ("rating_mean", "rating_count")


@dataclass(frozen=True)
class FeatureOptions:
    text: bool = True
    categorical: bool = True
    numerical: bool = True
    cache_dir: Path = Path(".cache/text-embeddings")
    progress: bool = True
    # numerical columns are normalised with statistics of the first `reference_items` items (all if
    # None): items added after training must not shift the inputs of the ones already indexed
    reference_items: int | None = None


def item_texts(data: RecDataset) -> list[str]:
    """One string per item: its text columns joined, empty ones skipped."""
    cols = list(data.item_text.values())
    return [". ".join(c[i] for c in cols if c[i]) for i in range(data.num_items)]


def numerical_matrix(
    data: RecDataset, train: TrainData, ratings: np.ndarray | None, reference_items: int | None = None
) -> np.ndarray:
    """(N, 2F): z-scored columns (NaN -> 0) followed by their missing flags."""
    cols = dict(data.item_numerical)
    if "rating_count" in cols:
        cols["rating_count"] = np.log1p(train.popularity()).astype(np.float32)
    if "rating_mean" in cols:
        cols["rating_mean"] = _train_mean_rating(train, ratings, data.num_items)
    if not cols:
        return np.zeros((data.num_items, 0), np.float32)
    x = np.stack(list(cols.values()), axis=1).astype(np.float32)
    missing = np.isnan(x)
    ref = x[:reference_items]
    mean, std = np.nanmean(ref, axis=0), np.nanstd(ref, axis=0)
    z = (x - np.nan_to_num(mean)) / np.where(np.nan_to_num(std) > 0, np.nan_to_num(std), 1.0)
    return np.concatenate([np.where(missing, 0.0, z), missing.astype(np.float32)], axis=1).astype(np.float32)


def _train_mean_rating(train: TrainData, ratings: np.ndarray | None, n: int) -> np.ndarray:
    if ratings is None:
        return np.full(n, np.nan, np.float32)
    rated = ~np.isnan(ratings)  # feedback without stars (clicks) joins a log without a rating
    sums = np.bincount(train.log.item[rated], weights=ratings[rated], minlength=n)
    counts = np.bincount(train.log.item[rated], minlength=n)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)


def item_inputs(data: RecDataset, train: TrainData, opts: FeatureOptions) -> ItemInputs:
    text = None
    if opts.text and data.item_text:
        text = torch.from_numpy(embed_texts(item_texts(data), opts.cache_dir, opts.progress))
    cats = tuple(
        (torch.from_numpy(f.indices), torch.from_numpy(f.indptr[:-1]))
        for f in (data.item_categorical.values() if opts.categorical else ())
    )
    ratings = train.log.rating
    num = (
        numerical_matrix(data, train, ratings, opts.reference_items)
        if opts.numerical
        else np.zeros((data.num_items, 0), np.float32)
    )
    known = torch.from_numpy(train.popularity() > 0)
    return ItemInputs(text, cats, torch.from_numpy(num) if num.shape[1] else None, known)


def user_groups(data: RecDataset) -> tuple[torch.Tensor | None, int]:
    """Codes of the first sensitive attribute (U,) and its number of groups, or (None, 0)."""
    if not data.sensitive:
        return None, 0
    attr = data.user_attributes[data.sensitive[0]]
    return torch.from_numpy(attr.codes), len(attr.vocab)
