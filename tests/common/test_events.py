"""The feedback event's contract: which external ids pass, the per-type bounds on `value`, and that
every accepted id survives the trips an event takes (spool line, Kafka key and value, Redis key)."""

from __future__ import annotations

import json
import re
import sys
import unicodedata

import jsonschema_rs
import pytest
from pydantic import TypeAdapter, ValidationError

from common import events
from common.events import EXTERNAL_ID_REGEX, MAX_ID_CHARS, ExternalId, FeedbackEvent, check_external_id

IDS = TypeAdapter(ExternalId)

GOOD_IDS = [
    "u1",
    "jane.doe@example.com",
    "550e8400-e29b-41d4-a716-446655440000",
    "catalog/films/42",
    "a+b=c?d#e%20f&g",
    "Jane Doe",
    "山田太郎",
    "Иван Петров",
    "محمد",
    "😀🎬",
    "می\u200cخواهم",  # noqa: RUF001 - Persian, with the zero-width non-joiner it needs
    "👨\u200d👩\u200d👧",  # an emoji ZWJ sequence
    "x" * MAX_ID_CHARS,
    "😀" * MAX_ID_CHARS,  # the widest allowed id: 4 bytes a character
]

BAD_IDS = [
    "",
    " u1",
    "u1 ",
    "line\nbreak",
    "tab\there",
    "nul\x00",
    "\x1b[31mred",  # an ANSI escape: would recolour a terminal reading the logs
    "u1\x1erejected",  # the separator of the history store's rejection keys (retrieval/history.py)
    "evil\u202eoverride",  # bidi override: a log line would read differently from what it holds
    "zero\u200bwidth",
    "\ud800",  # a lone surrogate: what JSON's "\ud800" decodes to
    "nbsp\xa0",
    "x" * (MAX_ID_CHARS + 1),
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_printable_ids_of_any_script_are_accepted_as_sent(value: str) -> None:
    assert IDS.validate_python(value) == value  # no normalisation: the caller's id, exactly
    assert len(value.encode("utf-8")) <= 1024


@pytest.mark.parametrize("value", BAD_IDS)
def test_unprintable_padded_or_overlong_ids_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        IDS.validate_python(value)


@pytest.mark.parametrize("value", GOOD_IDS)
def test_every_accepted_id_survives_the_spool_the_kafka_record_and_redis(value: str) -> None:
    event = FeedbackEvent.model_validate({"user_id": value, "item_id": value, "event_id": value, "type": "view",
                                          "request_id": value})  # fmt: skip
    line = event.model_dump_json().encode()
    assert b"\n" not in line  # one spool record per line
    assert FeedbackEvent.model_validate_json(line) == event  # the spool, Kafka value and the learner
    assert json.loads(line)["user_id"] == value
    assert event.user_id.encode("utf-8").decode("utf-8") == value  # the Kafka key, a Redis key


@pytest.mark.parametrize(("value", "ok"), [(0.0, True), (0.5, True), (5.0, True), (-0.5, False), (5.5, False),
                                           (1e6, False), (float("nan"), False), (float("inf"), False)])  # fmt: skip
def test_a_rating_value_stays_on_the_star_scale(value: float, ok: bool) -> None:
    event = {"user_id": "u1", "item_id": "m1", "type": "rating", "value": value}
    if ok:
        assert FeedbackEvent.model_validate(event).value == value
    else:
        with pytest.raises(ValidationError) as e:
            FeedbackEvent.model_validate(event)
        assert e.value.errors()[0]["loc"] == ("value",)


def test_other_event_types_share_the_rating_scale() -> None:
    """The learner reads `value` only for ratings; the bound still keeps any value sane downstream."""
    assert FeedbackEvent.model_validate({"user_id": "u1", "item_id": "m1", "type": "view", "value": 1.0}).value == 1.0
    with pytest.raises(ValidationError):
        FeedbackEvent.model_validate({"user_id": "u1", "item_id": "m1", "type": "view", "value": 1e6})


def test_the_refused_characters_are_the_unprintable_ones_of_this_unicode() -> None:
    """The written-out class matches str.isprintable's refusals (Cc Cf Zs Zl Zp; unassigned and
    private-use code points aside), less the space and the joiners: a guard against a typo in it."""
    scalars = "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)
    refused = re.sub(f"[^{events._REFUSED}]", "", scalars)  # what the class names
    expected = "".join(c for c in scalars if unicodedata.category(c) in {"Cc", "Cf", "Zs", "Zl", "Zp"})
    assert refused == expected.replace(" ", "").replace("\u200c", "").replace("\u200d", "")
    assert re.fullmatch(EXTERNAL_ID_REGEX, "a\ud800b")  # the published pattern cannot name surrogates...
    with pytest.raises(ValueError, match="printable"):
        check_external_id("a\ud800b")  # ...the validator refuses them apart


def test_the_published_pattern_is_the_validation() -> None:
    """What schema-driven clients and fuzzers read: a pattern Rust's and ECMA's engines compile."""
    schema = FeedbackEvent.model_json_schema()["properties"]["user_id"]
    assert schema["pattern"] == EXTERNAL_ID_REGEX
    validator = jsonschema_rs.validator_for(schema)
    assert validator.is_valid("jane.doe@example.com")
    assert validator.is_valid("山田 太郎")
    assert not validator.is_valid("a\tb")
    assert not validator.is_valid(" a")
    assert (schema["minLength"], schema["maxLength"]) == (1, MAX_ID_CHARS)


def test_lone_surrogates_in_event_json_are_refused() -> None:
    """What the learner reads from Kafka: pydantic's own JSON parser refuses them too."""
    with pytest.raises(ValidationError):
        FeedbackEvent.model_validate_json(b'{"user_id": "\\ud800", "item_id": "m1", "type": "view"}')
