"""Training loop shared by every trainable model: epochs, validation NDCG@10, early stopping with the
best weights restored, a wall-clock budget, fixed seeds, and optionally a moving average of the weights."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
    # decay of a moving average of the weights taken at each epoch's end, which validation, early
    # stopping and the restored weights use; training continues from the raw weights. 0: off
    weight_average: float = 0.0


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


class WeightAverage:
    """An exponential moving average of a model's weights (Polyak averaging), updated at epoch ends: on a
    validation plateau the weights swing from epoch to epoch, and the average smooths the swings out
    (measured in BENCHMARKS.md, early stopping: a gain inside the seed noise, so off by default)."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.state: dict[str, Any] | None = None

    def update(self, model: Trainable) -> None:
        current = model.state_dict()
        if self.state is None:
            self.state = copy.deepcopy(current)
            return
        for k, v in current.items():
            avg = self.state[k]
            if torch.is_floating_point(v):
                avg.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                avg.copy_(v)

    @contextlib.contextmanager
    def applied(self, model: Trainable) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        assert self.state is not None, "update() first"
        raw = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(raw)


def fit(
    model: Trainable,
    data: TrainData,
    valid: EvalSet,
    ctx: EvalContext,
    config: FitConfig,
    progress: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
) -> FitResult:
    """`on_validation(epoch, valid NDCG@10)` runs after each validation, with the weights validated in
    the model, before any stopping decision (benches record what else the model scores there)."""
    rng = seed_everything(config.seed)
    result, best_state, stale = FitResult(), copy.deepcopy(model.state_dict()), 0
    average = WeightAverage(config.weight_average) if config.weight_average > 0 else None
    start = time.perf_counter()
    bar = tqdm(range(1, config.max_epochs + 1), desc=f"train {model.name}", disable=not progress)
    for epoch in bar:
        loss = model.fit_epoch(data, rng)
        if average is not None:
            average.update(model)
        result.epochs = epoch
        out_of_time = config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s
        if epoch % config.eval_every and not out_of_time and epoch != config.max_epochs:
            continue
        with average.applied(model) if average is not None else contextlib.nullcontext():
            ndcg = evaluate(model, valid, ctx, ks=(10,), beyond=False)["NDCG@10"]
            result.curve.append((epoch, loss, ndcg))
            if on_validation is not None:
                on_validation(epoch, ndcg)
            if ndcg > result.best_valid_ndcg:
                result.best_valid_ndcg, result.best_epoch, stale = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{ndcg:.4f}")
        if stale >= config.patience or out_of_time:
            break
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - start
    return result
