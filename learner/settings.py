"""Learner settings: the RECSYS_ environment the service reads too (shared sections from
`common.settings`), plus the online-learning knobs. Read once, in `learner.__main__`."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.settings import AdapterSettings, KafkaSettings


class BatchSettings(BaseModel):
    size: int = Field(256, ge=1, le=10_000)  # a micro-batch closes at this many events ...
    max_wait_ms: int = Field(200, ge=1, le=60_000)  # ... or after this long
    # the embedded default's in-process learner shares the service's GIL: fewer, larger steps left the
    # service 4.4 instead of 5.5 ms of CPU per request at 200 requests/s (two warm 60 s runs)
    in_process_wait_ms: int = Field(1000, ge=1, le=60_000)


class OnlineSettings(BaseModel):
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    importance_threshold: float = Field(0.1, ge=0, le=1)
    lambda_ewc: float = Field(100.0, ge=0)
    history_len: int = Field(50, ge=1, le=1000)


class GuardSettings(BaseModel):
    holdout_every: int = Field(10, ge=0)  # 0: no hold-out, no guardrail
    holdout_size: int = Field(200, ge=1)
    margin: float = Field(0.02, ge=0)


class LearnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore")

    model_dir: Path = Path("runs/llm4rec")
    cache_dir: Path = Path(".cache/text-embeddings")
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    online: OnlineSettings = Field(default_factory=OnlineSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    learner_metrics_port: int = Field(9101, ge=0, le=65535)  # 0: no metrics endpoint
