"""Settings sections both processes read (environment prefix RECSYS_, nested with `__`): the same
variable configures the service and the learner, so they cannot disagree about topics or keys."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from common.adapter import KEY_PREFIX
from common.events import DEAD_LETTER_TOPIC, FEEDBACK_TOPIC


class KafkaSettings(BaseModel):
    bootstrap_servers: str | None = None  # None: the in-process sink and learner (embedded default)
    topic: str = FEEDBACK_TOPIC
    dead_letter_topic: str = DEAD_LETTER_TOPIC
    group_id: str = "llm4rec-learner"
    request_timeout_ms: int = Field(30_000, ge=1_000, le=300_000)


class AdapterSettings(BaseModel):
    signing_key: SecretStr | None = None  # HMAC key shared by learner and service; unset: not signed/checked
    prefix: str = KEY_PREFIX
    rank: int = Field(8, ge=1, le=128)
    poll_s: float = Field(1.0, gt=0, le=60)
    keep: int = Field(5, ge=1, le=100)  # versions kept for rollback

    def key(self) -> bytes | None:
        return self.signing_key.get_secret_value().encode() if self.signing_key else None
