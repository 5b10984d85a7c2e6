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

GAMMA_MULTIPLIERS = (0.0, 0.5, 1.0, 1.5)  # serving gamma candidates, as multiples of the learned one


def select_serving_gamma(model: LLM4Rec, split: Split, ctx: EvalContext) -> float:
    """PDA's adjusted inference: the popularity weight that serves validation best."""
    learned = float(model.gamma.detach())
    best, best_ndcg = learned, -1.0
    for m in GAMMA_MULTIPLIERS if model.config.pop_deconfound else (1.0,):
        model.serve_gamma = m * learned
        ndcg = evaluate(model, split.valid, ctx, ks=(10,), beyond=False)["NDCG@10"]
        if ndcg > best_ndcg:
            best, best_ndcg = m * learned, ndcg
    model.serve_gamma = best
    return best


@dataclass(frozen=True)
class TrainedLLM4Rec:
    model: LLM4Rec
    ctx: EvalContext
    fit: FitResult
    seconds: float


def train_llm4rec(data: RecDataset, split: Split, sw: Switches, fc: FitConfig, cache_dir: Path,
                  progress: bool = True, base: LLM4RecConfig | None = None) -> TrainedLLM4Rec:  # fmt: skip
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(fc.seed)
    start = time.perf_counter()
    model = build_model(data, train, sw, cache_dir, progress, base)
    result = fit(model, train, split.valid, ctx, fc, progress=progress)
    select_serving_gamma(model, split, ctx)
    return TrainedLLM4Rec(model, ctx, result, time.perf_counter() - start)
