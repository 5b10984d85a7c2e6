"""The feedback event: what `POST /feedback` accepts, the service spools and publishes to Kafka, and the
learner consumes. One schema for both processes, JSON on the wire (never pickle).

Kafka record: topic `FEEDBACK_TOPIC`, key = user id (all of a user's events land in one partition, in
order), value = `FeedbackEvent.model_dump_json()`.
"""

from __future__ import annotations

import uuid
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

FEEDBACK_TOPIC = "recsys.feedback"
DEAD_LETTER_TOPIC = "recsys.feedback.dlq"
ID_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
MAX_TIMESTAMP = 32_503_680_000  # year 3000: later than any honest clock, earlier than any overflow


class EventType(StrEnum):
    view = "view"
    click = "click"
    like = "like"
    dislike = "dislike"
    rating = "rating"
    purchase = "purchase"


class FeedbackEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128, pattern=ID_PATTERN)
    user_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    item_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    type: EventType
    value: float | None = Field(None, ge=-1e6, le=1e6, allow_inf_nan=False)
    timestamp: int = Field(0, ge=0, le=MAX_TIMESTAMP)  # 0: stamped with the receive time by the service
    request_id: str | None = Field(None, max_length=128, pattern=ID_PATTERN)
    position: int | None = Field(None, ge=0, le=10_000)

    @property
    def is_positive(self) -> bool:
        """Whether the event says the user wanted the item: what the user's history (the generative
        model's input) keeps. Ratings count from 3 on the 0.5-5 MovieLens scale."""
        if self.type is EventType.dislike:
            return False
        return self.type is not EventType.rating or self.value is None or self.value >= 3.0
