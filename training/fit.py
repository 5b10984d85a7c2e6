"""Training loop shared by every trainable model: epochs, validation NDCG@10, early stopping with the
best weights restored, a wall-clock budget, fixed seeds."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from models.scoring import Trainable, TrainData
from models.splits import EvalSet
from training.evaluate import EvalContext, evaluate


@dataclass(frozen=True)
class FitConfig:
    max_epochs: int = 200
    eval_every: int = 1
    patience: int = 5  # evaluations without a better validation NDCG@10 before stopping
    time_budget_s: float | None = None
    seed: int = 0


@dataclass
class FitResult:
    epochs: int = 0
    best_epoch: int = 0
    best_valid_ndcg: float = -1.0
    seconds: float = 0.0
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, loss, valid NDCG@10)


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def fit(
    model: Trainable,
    data: TrainData,
    valid: EvalSet,
    ctx: EvalContext,
    config: FitConfig,
    progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
) -> FitResult:
    """`on_validation(epoch, valid NDCG@10)` runs after each validation, before any stopping decision
    (benches record what else the model scores there)."""
    rng = seed_everything(config.seed)
    result, best_state, stale = FitResult(), copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    bar = tqdm(range(1, config.max_epochs + 1), desc=f"train {model.name}", disable=not progress)
    for epoch in bar:
        loss = model.fit_epoch(data, rng)
        result.epochs = epoch
        out_of_time = config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s
        if epoch % config.eval_every and not out_of_time and epoch != config.max_epochs:
            continue
        ndcg = evaluate(model, valid, ctx, ks=(10,), beyond=False)["NDCG@10"]
        result.curve.append((epoch, loss, ndcg))
        if on_validation is not None:
            on_validation(epoch, ndcg)
        bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{ndcg:.4f}")
        if ndcg > result.best_valid_ndcg:
            result.best_valid_ndcg, result.best_epoch, stale = ndcg, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if stale >= config.patience or out_of_time:
            break
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
