"""The feedback event: what `POST /feedback` accepts, the service spools and publishes to Kafka, and the
learner consumes. One schema for both processes, JSON on the wire (never pickle).

Kafka record: topic `FEEDBACK_TOPIC`, key = user id (UTF-8; all of a user's events land in one
partition, in order), value = `FeedbackEvent.model_dump_json()`.

External ids (`ExternalId`: users, items, events, requests) are the caller's own identifiers, kept
opaque and compared exactly as sent (no Unicode normalisation, no case folding): emails, UUIDs, paths
with slashes, spaces and any script. What is refused is what would make them unsafe downstream: control
and format characters (newlines and ANSI escapes forge log lines; bidi overrides make a log read
differently from what it holds), lone surrogates (a JSON `"\\ud800"` decodes to a str that cannot be
encoded as UTF-8, so no Redis or Kafka key can hold it), leading or trailing spaces (almost always a
client bug, and " u1" would silently be another user than "u1"), and more than `MAX_ID_CHARS` characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

FEEDBACK_TOPIC = "recsys.feedback"
DEAD_LETTER_TOPIC = "recsys.feedback.dlq"
MAX_TIMESTAMP = 32_503_680_000  # year 3000: later than any honest clock, earlier than any overflow
# 256 code points are at most 1024 bytes of UTF-8: well inside Redis's and Kafka's key limits
MAX_ID_CHARS = 256
# Refused in ids: Unicode categories Cc, Cf, Zs, Zl and Zp (Unicode 14), except the plain space and the
# zero-width (non-)joiners, which Persian and Indic words and emoji sequences need. The tag characters
# (U+E0000 block) are Cf too: invisible text that an LLM prompt would still read. Written out rather than
# derived from unicodedata so the published schema does not change with Python. Surrogates (Cs) are
# checked apart: no UTF-8 text holds one, so schema regex engines (Rust's, ECMA's with `u`) refuse to
# name them, but a Python str decoded from JSON's "\\ud800" does.
_REFUSED = (
    r"\u0000-\u001f\u007f-\u00a0\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u1680\u180e"
    r"\u2000-\u200b\u200e\u200f\u2028-\u202f\u205f-\u2064\u2066-\u206f\u3000\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
# published in the OpenAPI (so schema-driven fuzzers generate valid ids) and used as is to validate
EXTERNAL_ID_REGEX = f"^[^{_REFUSED} ](?:[^{_REFUSED}]*[^{_REFUSED} ])?$"
_EXTERNAL_ID = re.compile(EXTERNAL_ID_REGEX)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_external_id(value: str) -> str:
    if _EXTERNAL_ID.fullmatch(value) is None or _SURROGATE.search(value) is not None:
        if value.strip(" ") != value:
            raise ValueError("must not start or end with a space")
        raise ValueError("must contain only printable characters (no control, format or surrogate code points)")
    return value


ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(check_external_id),
    Field(
        description=f"printable Unicode, 1-{MAX_ID_CHARS} characters, no leading or trailing space",
        json_schema_extra={"pattern": EXTERNAL_ID_REGEX},
    ),
]
"""A caller's id (user, item, event, request), kept opaque and compared exactly as sent."""

RATING_MIN, RATING_MAX = 0.0, 5.0  # MovieLens stars (0.5-5); the learner grades around the 2.5 midpoint


class EventType(StrEnum):
    view = "view"
    click = "click"
    like = "like"
    dislike = "dislike"
    rating = "rating"
    purchase = "purchase"


class ServedUser(BaseModel):
    """The user vector the service last served a user from, logged with their feedback so the learner
    trains on the vector that was served instead of encoding the user again (Zinkevich's "Rules of ML"
    #29: log the features used at serving time). Only a hint: the learner takes it when `model` is its
    model and `window` is the fingerprint of the history window it would encode for the event (the
    user's history just before it), and encodes otherwise. Set by the service, never by a client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(max_length=200)  # the model version that encoded it
    window: str = Field(max_length=64)  # `window_fingerprint` of the history items it read
    vector: str = Field(max_length=65_536)  # base64 of the float32 vector (the frozen model's, before any adapter)

    @classmethod
    def of(cls, model: str, window: Sequence[str], vector: np.ndarray) -> ServedUser:
        raw = base64.b64encode(np.ascontiguousarray(vector, np.float32).tobytes()).decode()
        return cls(model=model, window=window_fingerprint(window), vector=raw)

    def array(self) -> np.ndarray:
        return np.frombuffer(binascii.a2b_base64(self.vector), np.float32)  # base64.b64decode, without its checks


WINDOW_SEP = "\x1f"  # refused in external ids: a joined window reads back one way only


def window_fingerprint(items: Sequence[str]) -> str:
    """Of a history window (external item ids, oldest first): the service's and the learner's internal
    item numbering may differ, the ids do not."""
    return joined_fingerprint(WINDOW_SEP.join(items))


def joined_fingerprint(joined: str) -> str:
    """`window_fingerprint` of a window already joined by `WINDOW_SEP`."""
    return hashlib.blake2b(joined.encode(), digest_size=16).hexdigest()


class FeedbackEvent(BaseModel):
    """`value`: a rating's stars, `RATING_MIN`-`RATING_MAX`. The learner turns it into a weight
    `(value - 2.5) / 2.5` in [-1, 1]; a wider scale would let one event outweigh many. Other event types
    may carry a value on the same scale, which the learner does not use (a bound that depended on the
    type could not be written in the published JSON schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_id: ExternalId = Field(default_factory=lambda: uuid.uuid4().hex)
    user_id: ExternalId
    item_id: ExternalId
    type: EventType
    value: float | None = Field(None, ge=RATING_MIN, le=RATING_MAX)
    timestamp: int = Field(0, ge=0, le=MAX_TIMESTAMP)  # 0: stamped with the receive time by the service
    request_id: ExternalId | None = None
    position: int | None = Field(None, ge=0, le=10_000)
    served: ServedUser | None = None  # set by the service (`service.schemas.ClientEvent` refuses it)

    @property
    def is_positive(self) -> bool:
        """Whether the event says the user wanted the item: what the user's history (the generative
        model's input) keeps. Ratings count from 3 on the 0.5-5 MovieLens scale."""
        if self.type is EventType.dislike:
            return False
        return self.type is not EventType.rating or self.value is None or self.value >= 3.0
