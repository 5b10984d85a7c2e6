"""The embedded learner's batches: a failing batch is retried, and given up only after its attempts; the
inbox keeps what was handed over until it is processed, across a kill of the process."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from common import local_state
from common.adapter_store import MemoryAdapterStore
from common.events import FeedbackEvent
from llm4rec.embedded import EmbeddedLearner, Inbox, _learn_with_retries
from service.settings import Settings
from service.state import app_state
from tests.conftest import SmallTrained, serve, until, with_
from tests.learner.test_end_to_end import _learner_settings

pytestmark = pytest.mark.anyio


class FailingLearner:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def process(self, events: Any) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("learning failed")


async def test_a_failed_batch_is_retried_until_it_is_learnt() -> None:
    learner = FailingLearner(failures=2)
    await _learn_with_retries(learner, [], attempts=3)  # type: ignore[arg-type]
    assert learner.calls == 3


async def test_a_batch_that_keeps_failing_is_given_up_after_its_attempts() -> None:
    learner = FailingLearner(failures=10)
    await _learn_with_retries(learner, [], attempts=3)  # type: ignore[arg-type]
    assert learner.calls == 3


def _clicks(n: int) -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=uuid.uuid4().hex, user_id=f"u{1 + k % 9}", item_id=f"m{k % 40}",  # type: ignore[arg-type]
                          type="click", timestamp=1_700_000_000 + k) for k in range(n)]  # fmt: skip


def test_the_inbox_keeps_events_until_they_are_processed_across_a_kill(tmp_path: Path) -> None:
    events = _clicks(5)
    first = Inbox(local_state.connect(tmp_path))
    first.put(events[:3])
    first.put(events[3:])
    last, batch = first.peek(4)
    assert batch == events[:4]
    first.done(last)
    again = Inbox(local_state.connect(tmp_path))  # a new process on the same folder: what was not done is there
    assert again.arrived.is_set()
    assert again.peek(10)[1] == events[4:]


async def test_events_a_killed_service_handed_over_are_learnt_at_the_next_start(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained
) -> None:
    events = _clicks(30)
    Inbox(local_state.connect(settings.state_dir)).put(events)  # handed over, then the process died
    store = MemoryAdapterStore()
    ls = _learner_settings(checkpoint, small_trained, "x:")
    async with serve(with_(settings, redis_url=None, adapter=ls.adapter), store) as (_, app):
        learner = await EmbeddedLearner(app_state(app), ls, store).attach()
        await until(lambda: learner.version >= 1, 20)
        assert all(await store.applied([e.event_id for e in events]))
        assert Inbox(local_state.connect(settings.state_dir)).peek(1)[1] == []
