"""Training LLM4Rec: fitting with early stopping and choosing the serving popularity weight.

The checkpoint format, the ablation switches and building the model live in `training.checkpoint`
(serving loads checkpoints without this module's training loop); they are re-exported here for the
training commands.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from models.data import RecDataset
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import TrainData
from models.splits import Split
from training.checkpoint import CheckpointMismatchError as CheckpointMismatchError
from training.checkpoint import Switches as Switches
from training.checkpoint import build_model as build_model
from training.checkpoint import load_checkpoint as load_checkpoint
from training.checkpoint import read_checkpoint_meta as read_checkpoint_meta
from training.checkpoint import save_checkpoint as save_checkpoint
from training.evaluate import EvalContext, evaluate
from training.fit import FitConfig, FitResult, fit, seed_everything

# Serving gamma candidates, as multiples of the learned one. do(popularity) removes some or all of
# popularity's direct effect; it never adds more than the confounded model learned.
GAMMA_MULTIPLIERS = tuple(m / 20 for m in range(21))  # 0, 0.05, ..., 1
GAMMA_TOLERANCE = 0.02


def validation_by_gamma(model: LLM4Rec, split: Split, ctx: EvalContext,
                        multipliers: tuple[float, ...] = GAMMA_MULTIPLIERS) -> dict[float, float]:  # fmt: skip
    """Validation NDCG@10 at each candidate serving gamma (multiples of the learned one)."""
    learned, kept = float(model.gamma.detach()), model.serve_gamma
    ndcg = {}
    for m in multipliers:
        model.serve_gamma = m * learned
        ndcg[m * learned] = evaluate(model, split.valid, ctx, ks=(10,), beyond=False)["NDCG@10"]
    model.serve_gamma = kept
    return ndcg


def smallest_near_best(ndcg: dict[float, float], tolerance: float) -> float:
    """The candidate closest to 0 whose validation NDCG@10 is within `tolerance` of the best."""
    best = max(ndcg.values())
    return min((g for g, v in ndcg.items() if v >= (1 - tolerance) * best), key=abs)


def select_serving_gamma(model: LLM4Rec, split: Split, ctx: EvalContext, tolerance: float = GAMMA_TOLERANCE) -> float:
    """The do(popularity) weight to serve (PDA's adjusted inference): the candidate closest to 0 whose
    validation NDCG@10 is within `tolerance` (relative) of the best candidate's, so serving spends
    noise-level accuracy on less popularity bias."""
    learned = float(model.gamma.detach())
    model.serve_gamma = smallest_near_best(validation_by_gamma(model, split, ctx), tolerance) if (
        model.config.pop_deconfound) else learned  # fmt: skip
    return model.serve_gamma


@dataclass(frozen=True)
class TrainedLLM4Rec:
    model: LLM4Rec
    ctx: EvalContext
    fit: FitResult
    seconds: float


def train_llm4rec(data: RecDataset, split: Split, sw: Switches, fc: FitConfig, cache_dir: Path,
                  progress: bool = True, base: LLM4RecConfig | None = None,
                  gamma_tolerance: float = GAMMA_TOLERANCE) -> TrainedLLM4Rec:  # fmt: skip
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(fc.seed)
    start = time.perf_counter()
    model = build_model(data, train, sw, cache_dir, progress, base)
    result = fit(model, train, split.valid, ctx, fc, progress=progress)
    select_serving_gamma(model, split, ctx, gamma_tolerance)
    return TrainedLLM4Rec(model, ctx, result, time.perf_counter() - start)
