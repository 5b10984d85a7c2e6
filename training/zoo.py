"""Baseline recommenders by name, each with the training schedule that suits it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.baselines import BPRMF, ItemKNN, LightGCN, MostPop, SASRec
from models.scoring import Scorer, TrainData
from training.fit import FitConfig


@dataclass(frozen=True)
class Entry:
    build: Callable[[TrainData], Scorer]
    fit: FitConfig | None  # None: nothing to train


# BPR-style models converge over hundreds of cheap epochs, so they are validated every 5.
BASELINES: dict[str, Entry] = {
    "mostpop": Entry(MostPop, None),
    "itemknn": Entry(ItemKNN, None),
    "bprmf": Entry(lambda d: BPRMF(d.num_users, d.num_items), FitConfig(max_epochs=300, eval_every=5, patience=4)),
    "lightgcn": Entry(LightGCN, FitConfig(max_epochs=300, eval_every=5, patience=4)),
    "sasrec": Entry(lambda d: SASRec(d.num_items), FitConfig(max_epochs=200, eval_every=2, patience=5)),
}
