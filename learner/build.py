"""Assemble a learner from a checkpoint: the frozen model, a fresh adapter (identity), the Fisher of
the training data for EWC, every user's history, and, when the store already holds an adapter for this
model, that adapter's weights (a restarted learner continues where the last one published). The
checkpoint is loaded for serving (`load_serving_checkpoint`): no training code, no re-split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog
import torch

from common.adapter import AdapterRejectedError, decode
from common.adapter_store import AdapterStore
from common.settings import AdapterSettings
from learner.metrics import LearnerMetrics
from learner.pipeline import GuardConfig, Learner
from learner.popularity import DecayedPopularity
from learner.settings import LearnerSettings
from learner.trainer import IMPLICIT, Example, OnlineConfig, OnlineTrainer
from models.adapter import ServingAdapter
from models.scoring import TrainData
from retrieval.catalog import ModelItemVectors, NewItem, add_items
from retrieval.history import HistoryStore, dataset_histories
from retrieval.item_log import ItemLog
from training.checkpoint import ServingCheckpoint, load_serving_checkpoint

log = structlog.get_logger()
DAY_S = 86_400.0


def training_examples(train: TrainData, n: int, seed: int = 0) -> list[Example]:
    """Random (history prefix -> next item) pairs from the training interactions."""
    rng = np.random.default_rng(seed)
    seqs = [s for s in train.sequences().values() if len(s) > 1]
    out = []
    for j in rng.integers(len(seqs), size=n):
        s = seqs[int(j)]
        t = int(rng.integers(1, len(s)))
        out.append(Example(s[:t], int(s[t]), IMPLICIT, 1.0, 0.0))
    return out


class ContentVectors:
    """Content-only vectors of items added after training, computed as the service's catalogue does
    (`ModelItemVectors`): the learner's model grows with them, so users' histories can hold them."""

    def __init__(self, ck: ServingCheckpoint, cache_dir: Path) -> None:
        self.data, self.source = ck.data, ModelItemVectors(ck.model, ck.train, cache_dir)

    def __call__(self, new: Sequence[NewItem]) -> torch.Tensor:
        self.data = add_items(self.data, new)
        with torch.no_grad():
            rows = self.source.grow(self.data, np.zeros((0, 0), np.float32))
        return torch.from_numpy(rows[-len(new) :, :-1].copy())


def build_learner(model_dir: Path, cache_dir: Path, store: AdapterStore, adapter: AdapterSettings,
                  online: OnlineConfig, guard: GuardConfig, metrics: LearnerMetrics, fisher_examples: int = 1024,
                  history: HistoryStore | None = None, item_log: ItemLog | None = None,
                  user_refresh_every: int = 1) -> Learner:  # fmt: skip
    ck = load_serving_checkpoint(model_dir, cache_dir)
    torch.manual_seed(0)
    n = int(ck.model.log_pop.shape[0])
    module = ServingAdapter(ck.model.config.fusion.dim, n, adapter.rank, ck.model.log_pop)
    train_log = ck.train.log
    half_life_s = online.popularity_half_life_days * DAY_S
    pop = (DecayedPopularity.from_log(train_log.item, train_log.timestamp, n, half_life_s, rescale=True)
           if half_life_s > 0 else None)  # fmt: skip
    trainer = OnlineTrainer(ck.model, module, online, pop, user_refresh_every)
    examples = training_examples(ck.train, fisher_examples)
    trainer.fit_fisher([examples[i : i + 64] for i in range(0, len(examples), 64)], ck.train.popularity()[:n])
    index = {x: i for i, x in enumerate(ck.data.item_ids)}
    # with the service's store the learner keeps no copy of its own
    histories = {} if history else {u: [index[i] for i, _ in h] for u, h in dataset_histories(ck.data).items()}
    return Learner(trainer, ck.data.item_ids, histories, store, ck.version, adapter.key(), metrics, guard,
                   history_store=history, item_log=item_log, content=ContentVectors(ck, cache_dir))  # fmt: skip


async def resume(learner: Learner) -> int:
    """Learn of the items added since training, then continue from the store's current adapter if it
    was trained for this model; returns its version."""
    await learner.catch_up_items()
    version = await learner.store.current()
    fields = await learner.store.fetch(version) if version else None
    if fields is None:
        return 0
    rank, dim = learner.published_adapter.A.shape
    try:
        expect = ServingAdapter.shapes_for(dim, learner.trained_items, rank)
        manifest, tensors = decode(fields, learner.key, expect, newer_than=0)
    except AdapterRejectedError as e:
        log.warning("adapter_not_resumed", version=version, reason=e.reason)
        return 0
    if manifest.base_model != learner.base_model:
        return 0
    learner.load(tensors, manifest.items)
    learner.version, learner.events_seen = version, manifest.events_seen
    log.info("adapter_resumed", version=version)
    return version


def learner_from_settings(s: LearnerSettings, store: AdapterStore, metrics: LearnerMetrics,
                          history: HistoryStore | None = None, item_log: ItemLog | None = None) -> Learner:  # fmt: skip
    online, guard = s.online.to_config(), s.guard.to_config()
    return build_learner(s.model_dir, s.cache_dir, store, s.adapter, online, guard, metrics, history=history,
                         item_log=item_log, user_refresh_every=s.user_refresh_every)  # fmt: skip
