"""The embedded learner's batches: a failing batch is retried, and given up only after its attempts."""

from __future__ import annotations

from typing import Any

import pytest

from llm4rec.embedded import _learn_with_retries

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
