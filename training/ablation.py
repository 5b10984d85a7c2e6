"""Ablation of LLM4Rec's components (the paper's Table IV): each variant switches one thing off."""

from __future__ import annotations

from dataclasses import replace

from training.llm4rec_train import Switches

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
