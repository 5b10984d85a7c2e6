"""Ablation of LLM4Rec's components (the paper's Table IV): each variant switches one thing off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models.data import RecDataset
from models.splits import Split
from training.experiment import RunConfig, llm4rec_fit_config, llm4rec_metrics
from training.llm4rec_train import Switches, train_llm4rec

FULL = Switches()
VARIANTS: dict[str, Switches] = {
    "full": FULL,
    "w/o fusion (ids only)": replace(FULL, fusion=False),
    "w/o text": replace(FULL, text=False),
    "w/o item ids (content only)": replace(FULL, ids=False),
    "w/o cross-modal attention": replace(FULL, cross_attention=False),
    "w/o adaptive weights": replace(FULL, adaptive_weights=False),
    "w/o IPW": replace(FULL, ipw=False),
    "w/o popularity deconfounding": replace(FULL, pop_deconfound=False),
    "w/o fairness adversary": replace(FULL, fair=False),
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
