"""Settings both processes read (environment prefix RECSYS_, nested with `__`): `ProcessSettings`
is the base of the service's `Settings` and the learner's `LearnerSettings`, so the same variable
configures both with one default, and they cannot disagree about paths, Redis, topics or keys."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.adapter import KEY_PREFIX
from common.events import DEAD_LETTER_TOPIC, FEEDBACK_TOPIC


class MissingSettingError(ValueError):
    """A setting this process cannot run without is unset; the message names the variable."""


class IndexSettings(BaseModel):
    location: str = ".cache/index"  # a folder (Qdrant Edge), qdrant-local:PATH, or a Qdrant server URL
    api_key: SecretStr | None = None
    build_if_missing: bool = True  # embedded default: build the index from the checkpoint at first start


class KafkaSettings(BaseModel):
    bootstrap_servers: str | None = None  # None: the in-process sink and learner (embedded default)
    topic: str = FEEDBACK_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    group_id: str = "llm4rec-learner"
    request_timeout_ms: int = Field(30_000, ge=1_000, le=300_000)


class AdapterSettings(BaseModel):
    signing_key: SecretStr | None = None  # HMAC key shared by learner and service; unset: not signed/checked
    prefix: str = KEY_PREFIX
    # of the learner's user-side map: 32 gained about 1.5 points of NDCG@10 over 8 in three replays on each
    # of ml-100k and ml-latest-small (BENCHMARKS.md, learner-reading)
    rank: int = Field(32, ge=1, le=128)
    poll_s: float = Field(1.0, gt=0, le=60)
    keep: int = Field(5, ge=1, le=100)  # versions kept for rollback

    def key(self) -> bytes | None:
        return self.signing_key.get_secret_value().encode() if self.signing_key else None


class ProcessSettings(BaseSettings):
    """The fields every process reads; each process's settings class adds its own sections."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_nested_delimiter="__", extra="ignore")

    model_dir: Path = Path("runs/llm4rec")
    cache_dir: Path = Path(".cache/text-embeddings")
    # the service without Redis: histories, event ids and adapters on disk here, so a restart forgets
    # nothing (None: in memory only); either process: the feedback its next fine-tune will learn
    state_dir: Path | None = Path(".cache/state")
    # None: history and adapters stay in the service process (embedded default); the standalone Kafka
    # learner refuses to start without it (`require_redis_url`), it has no other way to reach the service
    redis_url: str | None = None
    # users' histories in Redis: the service writes them, the Kafka learner reads the same ones
    history_prefix: str = "recsys:history:"
    history_len: int = Field(200, ge=1, le=10_000)
    # the one cache policy of users' vectors (retrieval.user_models.UserVectors), service and learner alike:
    # a vector is reused while fewer than this many items were appended to the history it was encoded
    # from. 1: at every change (BENCHMARKS.md, learner-prequential-*: serving vectors 5 items stale cost
    # NDCG@10; the learner pays with its throughput)
    user_refresh_every: int = Field(1, ge=1, le=1000)
    # with Redis, items added after training (POST /items) as a stream: every replica and the learner read it
    items_stream: str = "recsys:items"
    # where the deployment names the model it serves: the Kafka learner sets it after a fine-tune, and
    # every replica loads that checkpoint from the shared model folder
    model_key: str = "recsys:model"
    index: IndexSettings = Field(default_factory=IndexSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)

    def require_redis_url(self, why: str) -> str:
        """`redis_url`, or MissingSettingError naming RECSYS_REDIS_URL and `why` it is needed."""
        if not self.redis_url:
            raise MissingSettingError(f"RECSYS_REDIS_URL is not set: {why}")
        return self.redis_url
