"""One micro-batch through the learner: dedupe, publish, guardrail, all-or-nothing on failure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.adapter import decode
from common.adapter_store import MemoryAdapterStore
from common.events import FeedbackEvent, ServedUser, window_fingerprint
from common.settings import AdapterSettings
from learner.build import build_learner
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner, _held_out, _Joined
from learner.settings import GuardSettings, OnlineSettings
from tests.conftest import SmallTrained

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _learner(checkpoint: Path, st: SmallTrained, store: MemoryAdapterStore, guard: GuardSettings | None = None,
             **online: float) -> Learner:  # fmt: skip
    adapter = AdapterSettings(signing_key="k")  # type: ignore[arg-type]
    guard = guard or GuardSettings(holdout_every=0)
    return build_learner(checkpoint, st.cache, store, adapter, OnlineSettings(**online).to_config(),
                         guard.to_config(), LearnerMetrics(), fisher_examples=64)  # fmt: skip


def _likes(user: str, items: Sequence[int]) -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=uuid.uuid4().hex, user_id=user, item_id=f"m{i}", type="like",  # type: ignore[arg-type]
                          timestamp=1_700_000_000 + n) for n, i in enumerate(items)]  # fmt: skip


async def test_a_batch_is_published_once_and_replays_are_skipped(checkpoint: Path, small_trained: SmallTrained) -> None:
    store = MemoryAdapterStore()
    learner = _learner(checkpoint, small_trained, store)
    events = [*_likes("u1", range(20, 30)), FeedbackEvent(user_id="u1", item_id="nope", type="view")]  # type: ignore[arg-type]
    out = await learner.process(events)
    assert (out.applied, out.duplicates, out.unknown, out.version) == (10, 0, 1, 1)
    fields = await store.fetch(1)
    assert fields is not None
    manifest, tensors = decode(fields, b"k", {k: v.shape for k, v in learner.published_state.items()}, 0)
    assert manifest.events_seen == 11
    assert np.any(tensors["item_delta"][20:30] != 0)  # the update moved the clicked items' rows
    again = await learner.process(events[:5])  # redelivered after a crash before the offset commit
    assert (again.applied, again.duplicates, again.version) == (0, 5, None)
    assert await store.current() == 1


async def test_the_guardrail_refuses_an_update_that_hurts_the_holdout(
    checkpoint: Path, small_trained: SmallTrained
) -> None:
    store = MemoryAdapterStore()
    learner = _learner(checkpoint, small_trained, store, GuardSettings(holdout_every=3), lr=500.0, momentum=0.0,
                       adapter_updates=True)  # fmt: skip
    before = learner.trainer.state()
    events = _likes("u1", list(range(20, 40)) * 3)  # a wild step on a sci-fi fan
    out = await learner.process(events)
    assert out.rejected
    assert out.version is None
    assert await store.current() == 0
    assert all(np.array_equal(before[k], v) for k, v in learner.trainer.state().items())
    assert all(await store.applied([e.event_id for e in events]))  # processed: a redelivery is skipped


@pytest.mark.parametrize("holdout_every", [0, 2])
async def test_a_failed_publish_leaves_nothing_half_done(checkpoint: Path, small_trained: SmallTrained,
                                                         holdout_every: int) -> None:  # fmt: skip
    class Flaky(MemoryAdapterStore):
        fail = True

        async def publish(self, version: int, fields: dict[str, bytes], event_ids: Sequence[str]) -> None:
            if self.fail:
                raise ConnectionError("redis went away")
            await super().publish(version, fields, event_ids)

    store = Flaky()
    # with the guardrail on (one event in two held out) as well as off; a gentle step that it accepts
    learner = _learner(checkpoint, small_trained, store, GuardSettings(holdout_every=holdout_every, margin=1.0))
    events = _likes("u1", range(20, 32))
    state, history = learner.trainer.state(), list(learner.histories["u1"])
    with pytest.raises(ConnectionError):
        await learner.process(events)
    assert all(np.array_equal(state[k], v) for k, v in learner.trainer.state().items())
    assert learner.histories["u1"] == history
    assert len(learner.holdout) == 0  # the failed batch's held-out examples did not stay behind
    store.fail = False
    assert (await learner.process(events)).version == 1  # the retry applies the batch exactly once
    assert learner.histories["u1"][-12:] == list(range(20, 32))
    expected = sum(_held_out(e.event_id, holdout_every) for e in events)  # u1 has a history: every event counts
    assert len(learner.holdout) == expected  # each held-out example once, not once per attempt


async def test_with_the_services_history_store_the_learner_trains_on_the_histories_it_serves(
    checkpoint: Path, small_trained: SmallTrained
) -> None:
    """The learner reads each user's history from the store the service writes (which already holds the
    batch's own events): the examples are built on what came before the batch, and a fresh learner
    (a restart) sees what the last one learnt from."""
    from retrieval.history import MemoryHistoryStore

    history = MemoryHistoryStore()
    await history.append("newcomer", [(f"m{i}", 1_600_000_000 + i) for i in (1, 3, 5)])
    events = _likes("newcomer", [20, 21])
    await history.append("newcomer", [(e.item_id, e.timestamp) for e in events])  # as the service does first
    learner = _learner(checkpoint, small_trained, MemoryAdapterStore())
    learner.history_store = history
    before = await learner._histories_before(events)
    assert [small_trained.data.item_ids[i] for i in before["newcomer"]] == ["m1", "m3", "m5"]
    train = learner._examples(events, before).train
    assert [list(e.history) for e in train] == [list(before["newcomer"]), [*before["newcomer"], 20]]
    assert (await learner.process(events)).version == 1
    assert "newcomer" not in learner.histories  # nothing kept in the learner itself
    restarted = _learner(checkpoint, small_trained, MemoryAdapterStore())
    restarted.history_store = history
    later = [e.model_copy(update={"timestamp": 1_700_000_100}) for e in _likes("newcomer", [22])]
    assert len((await restarted._histories_before(later))["newcomer"]) == 5


async def test_the_guard_s_remembered_losses_are_what_the_published_adapter_scores(
    checkpoint: Path, small_trained: SmallTrained
) -> None:
    """The guard keeps each held-out example's loss under the published adapter instead of scoring it
    again at every batch: after accepted and refused updates alike, those losses are the published
    adapter's own, to float precision."""
    store = MemoryAdapterStore()
    learner = _learner(checkpoint, small_trained, store, GuardSettings(holdout_every=2, margin=0.0), lr=5.0)
    rng = np.random.default_rng(0)
    outcomes = []
    for _ in range(6):
        users = [f"u{u}" for u in rng.integers(1, 60, size=24)]
        events = [e for u in users for e in _likes(u, [int(rng.integers(0, 40))])]
        outcomes.append((await learner.process(events)).rejected)
        held = list(learner.holdout)
        assert all(h.published is not None for h in held)
        examples = [h.example for h in held]
        fresh = learner.trainer.full_losses(examples, learner.published_adapter)  # encoded again, uncached
        np.testing.assert_allclose([h.published for h in held], fresh.numpy(), rtol=1e-5, atol=1e-6)
    assert len(learner.holdout) > 10
    assert any(outcomes)  # a refused update ...
    assert not all(outcomes)  # ... and an accepted one: both paths were taken


def _as_served(learner: Learner, events: Sequence[FeedbackEvent], model: str | None = None,
               stale: bool = False) -> list[FeedbackEvent]:  # fmt: skip
    """`events` carrying the vector a service would have served each one's user from (the history just
    before the event); `stale`: the one before that (the user acted since the list was served)."""
    users, histories, out = learner.trainer.users.model, dict(learner.histories), []
    for e in events:
        history = histories[e.user_id]
        window = tuple(history[-users.window - 1 : -1] if stale else history[-users.window :])
        vector = users.encode([window])[0].numpy()
        served = ServedUser.of(model or learner.base_model, [learner.item_ids[i] for i in window], vector)
        out.append(e.model_copy(update={"served": served}))
        histories[e.user_id] = [*history, learner.item_index[e.item_id]]
    return out


class _Counted:
    """A user model that counts the histories it encodes."""

    def __init__(self, model: Any) -> None:
        self.model, self.encoded = model, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def encode(self, histories: Any) -> Any:
        self.encoded += len(histories)
        return self.model.encode(histories)


@pytest.mark.parametrize("served", ["fits", "stale", "other model", "none"])
async def test_the_learner_trains_on_the_user_vector_the_service_served_when_it_fits(
    checkpoint: Path, small_trained: SmallTrained, served: str
) -> None:
    """An event that carries the vector the service served its user from, for exactly the history the
    learner would encode under the same model, is learnt from that vector without encoding the user;
    the update is the one encoding would have given. A vector served before the user's last action, or
    by another model, is not used."""
    events = _likes("u1", range(20, 30)) + _likes("u2", range(30, 34))
    reference = _learner(checkpoint, small_trained, MemoryAdapterStore())
    learner = _learner(checkpoint, small_trained, MemoryAdapterStore())
    if served != "none":
        events = _as_served(learner, events, "another" if served == "other model" else None, served == "stale")
    counted = _Counted(learner.trainer.users.model)
    learner.trainer.users.model = counted  # type: ignore[assignment]
    for each in (reference, learner):
        torch.manual_seed(0)  # the same sampled negatives
        assert (await each.process(events)).version == 1
    assert counted.encoded == (0 if served == "fits" else len(events))
    for k, v in reference.published_state.items():
        np.testing.assert_allclose(learner.published_state[k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_a_window_moved_item_by_item_fingerprints_as_the_window_itself() -> None:
    """The learner's running window (`_Joined`) against `window_fingerprint` of the last `size` ids,
    from empty, through the size limit, and on."""
    ids = [f"item {i}" for i in range(12)]
    running = _Joined([], 5)
    for n, x in enumerate(ids, 1):
        running.push(x)
        assert running.fingerprint() == window_fingerprint(ids[max(0, n - 5) : n])
