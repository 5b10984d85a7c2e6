"""Learner settings: the RECSYS_ environment the service reads too (`common.settings.ProcessSettings`),
plus the online-learning sections. Read once, in `learner.__main__` (and by the embedded default's
in-process learner); each section's `to_config()` builds the frozen config the learner's parts take,
so every default is written here once."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.settings import ProcessSettings
from learner.pipeline import GuardConfig
from learner.trainer import OnlineConfig


class BatchSettings(BaseModel):
    # a micro-batch closes at this many events ... Under load a batch is full: it takes its steps
    # (`OnlineSettings.step_size` events each), then one guardrail check and one publish, whose cost
    # (scoring the hold-out against the catalogue, writing every item row) a larger batch spreads thinner
    size: int = Field(2048, ge=1, le=10_000)
    max_wait_ms: int = Field(200, ge=1, le=60_000)  # ... or after this long
    # the embedded default's in-process learner shares the service's GIL: fewer, larger steps left the
    # service 4.4 instead of 5.5 ms of CPU per request at 200 requests/s (two warm 60 s runs)
    in_process_wait_ms: int = Field(1000, ge=1, le=60_000)
    max_failures: int = Field(3, ge=1, le=100)  # attempts at a failing batch before it is dead-lettered


class OnlineSettings(BaseModel):
    """`OnlineConfig` (learner/trainer.py says what each knob does)."""

    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    importance_threshold: float = Field(0.1, ge=0, le=1)
    # BENCHMARKS.md, learner-forgetting: a drift of the whole stream moves the adapter at 100; holding it
    # (fisher_decay 1, lambda 1e6) also removed the adapter's gain in the replay
    lambda_ewc: float = Field(100.0, ge=0)
    fisher_decay: float = Field(0.99, ge=0, le=1)
    consolidate_every: int = Field(20_000, ge=1)
    min_lr_scale: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0)
    reliability_decay: float = Field(0.95, ge=0, lt=1)
    negatives: int = Field(1024, ge=0)
    step_size: int = Field(256, ge=1)  # events per SGD step; a larger micro-batch takes several
    # measured in the prequential replay (BENCHMARKS.md, learner-prequential-*): the user-side map gains
    # on both datasets (what it learns is shared by every user, so a drift of the whole stream moves it
    # too: learner-forgetting), the item rows on ml-latest-small, the streaming popularity on top of
    # both on ml-100k
    adapter_updates: bool = True
    item_updates: bool = True
    # 2 scored the same in the replays, but beside the user map it let a single user's binge blow up a
    # small model's rows (tests/learner/test_trainer.py); 1 with the gradient bound stays stable
    item_lr: float = Field(1.0, gt=0)
    lambda_item: float = Field(1.0, ge=0)
    popularity_half_life_days: float = Field(180.0, ge=0)  # 0: training-time popularity, fixed

    def to_config(self) -> OnlineConfig:
        return OnlineConfig(**self.model_dump())


class GuardSettings(BaseModel):
    """`GuardConfig` (learner/pipeline.py)."""

    holdout_every: int = Field(10, ge=0)  # 0: no hold-out, no guardrail
    holdout_size: int = Field(200, ge=1)
    margin: float = Field(0.02, ge=0)

    def to_config(self) -> GuardConfig:
        return GuardConfig(**self.model_dump())


class FineTuneSettings(BaseModel):
    """The periodic warm fine-tune (learner/fine_tune.py): the served model trained on for `epochs` over
    its training interactions and the positive feedback since, in a child process."""

    # positive events between two fine-tunes (0: off). In the prequential replay (BENCHMARKS.md,
    # learner-reading), under the learner's defaults, one epoch every third of the stream (6,700 events
    # of either MovieLens tail) was the most frequent cadence within a tenth of a retrain's CPU seconds
    # that matched the retrain; every fifth or tenth gained more NDCG@10 at 11% and 22% of them
    every_events: int = Field(6_700, ge=0)
    epochs: int = Field(1, ge=1, le=20)
    min_interval_s: float = Field(60.0, ge=0)  # a busy stream fine-tunes at most this often
    threads: int = Field(1, ge=1, le=64)  # the child's torch threads: the rest of the cores keep serving


class LearnerSettings(ProcessSettings):
    """`ProcessSettings` (model_dir, cache_dir, state_dir, redis_url, index, kafka, adapter) plus the
    learner's sections. The standalone Kafka learner needs `redis_url` (`require_redis_url`); the
    in-process one does not."""

    batch: BatchSettings = Field(default_factory=BatchSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    fine_tune: FineTuneSettings = Field(default_factory=FineTuneSettings)
    learner_metrics_port: int = Field(9101, ge=0, le=65535)  # 0: no metrics endpoint
