"""Ablation of LLM4Rec's components (the paper's Table IV): each variant flips one switch of the
default model, off where it is on by default ("w/o") and on where it is off ("with")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models.data import RecDataset
from models.splits import Split
from training.experiment import RunConfig, llm4rec_fit_config, llm4rec_metrics
from training.llm4rec_train import Switches, train_llm4rec

DEFAULT = Switches()
COMPONENTS = {  # switch -> how the table names it
    "fusion": "fusion (off: ids only)",
    "text": "text",
    "ids": "item ids (off: content only)",
    "cross_attention": "cross-modal attention",
    "adaptive_weights": "adaptive weights",
    "ipw": "IPW",
    "pop_deconfound": "popularity deconfounding",
    "fair": "fairness adversary",
}
VARIANTS: dict[str, Switches] = {"default": DEFAULT} | {
    f"{'w/o' if getattr(DEFAULT, k) else 'with'} {label}": replace(DEFAULT, **{k: not getattr(DEFAULT, k)})
    for k, label in COMPONENTS.items()
}


def run_ablation(
    data: RecDataset, split: Split, names: list[str], config: RunConfig, cache_dir: Path
) -> dict[str, dict[str, float]]:
    """Train and test each named variant; test metrics plus training figures per variant."""
    results = {}
    for name in names:
        trained = train_llm4rec(data, split, VARIANTS[name], llm4rec_fit_config(config), cache_dir, config.progress)
        results[name] = llm4rec_metrics(trained, split, config)
    return results
