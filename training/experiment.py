"""Train-and-evaluate runs over a dataset: the job behind `llm4rec eval`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.data import RecDataset
from models.llm4rec import LLM4Rec
from models.scoring import Scorer, Trainable, TrainData
from models.splits import Split
from recdata import load_dataset
from training.checkpoint import SPLITS as SPLITS
from training.checkpoint import checkpoint_version as checkpoint_version
from training.checkpoint import load_checkpoint, read_checkpoint_meta, split_dataset
from training.evaluate import EvalContext, evaluate
from training.fit import FitConfig, fit, seed_everything
from training.llm4rec_train import TrainedLLM4Rec
from training.zoo import BASELINES, SEQUENTIAL_FIT, Entry


@dataclass(frozen=True)
class RunConfig:
    split: str = "leave-one-out"
    protocol: str = "full"
    min_rating: float | None = None
    seed: int = 0
    max_epochs: int | None = None  # caps every model's own schedule (quick runs, tests)
    time_budget_s: float | None = None
    progress: bool = True


def make_split(data: RecDataset, config: RunConfig) -> Split:
    return split_dataset(data, config.split, config.min_rating)


@dataclass(frozen=True)
class Trained:
    model: Scorer
    ctx: EvalContext
    info: dict[str, float]  # epochs, best_epoch, train_seconds


def train_baseline(name: str, data: RecDataset, split: Split, config: RunConfig, entry: Entry | None = None) -> Trained:
    """Fit one baseline, early-stopped on validation NDCG@10 (untrainable ones are just built).
    `entry` overrides how the named model is built and scheduled (settings studies)."""
    if entry is None and name not in BASELINES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(BASELINES)}")
    entry = entry or BASELINES[name]
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(config.seed)
    start = time.perf_counter()
    model = entry.build(train)
    info: dict[str, float] = {}
    if entry.fit is not None and isinstance(model, Trainable):
        fc = replace(entry.fit, seed=config.seed, time_budget_s=config.time_budget_s)
        if config.max_epochs is not None:
            fc = replace(fc, max_epochs=min(fc.max_epochs, config.max_epochs))
        result = fit(model, train, split.valid, ctx, fc, progress=config.progress)
        info = {"epochs": float(result.epochs), "best_epoch": float(result.best_epoch)}
    info["train_seconds"] = time.perf_counter() - start
    return Trained(model, ctx, info)


def test_metrics(trained: Trained, split: Split, config: RunConfig) -> dict[str, float]:
    m = evaluate(
        trained.model, split.test, trained.ctx, protocol=config.protocol, seed=config.seed, progress=config.progress
    )
    return {**m, **trained.info}


def run_baseline(name: str, data: RecDataset, split: Split, config: RunConfig) -> dict[str, float]:
    return test_metrics(train_baseline(name, data, split, config), split, config)


def llm4rec_metrics(trained: TrainedLLM4Rec, split: Split, config: RunConfig) -> dict[str, float]:
    """Test metrics of a trained LLM4Rec plus what training cost and learned."""
    info = {"epochs": float(trained.fit.epochs), "best_epoch": float(trained.fit.best_epoch),
            "train_seconds": trained.seconds, "gamma": float(trained.model.gamma.detach()),
            "serve_gamma": float(trained.model.serve_gamma or 0.0),
            "valid_NDCG@10": trained.fit.best_valid_ndcg}  # fmt: skip
    return test_metrics(Trained(trained.model, trained.ctx, info), split, config)


def llm4rec_fit_config(config: RunConfig) -> FitConfig:
    fc = replace(SEQUENTIAL_FIT, seed=config.seed, time_budget_s=config.time_budget_s)
    return replace(fc, max_epochs=min(fc.max_epochs, config.max_epochs or fc.max_epochs))


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A trained LLM4Rec with the dataset and the whole split it was trained on, for evaluation. Serving
    needs no split: `training.checkpoint.load_serving_checkpoint`."""

    model: LLM4Rec
    data: RecDataset
    split: Split
    train: TrainData
    config: RunConfig
    meta: dict[str, Any]


def open_checkpoint(path: Path, cache_dir: Path, protocol: str = "full") -> OpenedCheckpoint:
    """Loads the checkpoint and rebuilds its split from the dataset reference it recorded; raises
    CheckpointMismatchError (bad folder, other dataset) or recdata.DatasetError."""
    meta = read_checkpoint_meta(path)
    run = meta["run"]
    config = RunConfig(split=run["split"], protocol=protocol, min_rating=run["min_rating"], seed=run["seed"])
    data = load_dataset(meta["dataset_ref"])
    split = make_split(data, config)
    train = TrainData(split.train, split.num_users, split.num_items)
    return OpenedCheckpoint(load_checkpoint(path, data, train, cache_dir), data, split, train, config, meta)
