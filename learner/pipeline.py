"""One micro-batch of feedback, start to finish: drop events already applied, turn the rest into
examples against each user's history, take an online step, check the hold-out guardrail, publish.

Used by the Kafka consumer (`learner.consumer`) and by the in-process learner of the embedded default.
Every event is either applied (it went into a published adapter) or discarded with the update the
guardrail refused; both are recorded in the adapter store in one transaction with the publish, so a
learner restarted from older Kafka offsets skips them.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import numpy as np
import structlog

from common.adapter import Manifest, encode
from common.adapter_store import AdapterStore
from common.events import EventType, FeedbackEvent
from learner.metrics import LearnerMetrics
from learner.trainer import EXPLICIT, IMPLICIT, Example, OnlineTrainer, StepStats
from retrieval.history import HistoryStore

log = structlog.get_logger()


@dataclass(frozen=True)
class GuardConfig:
    """The hold-out guardrail. Defaults and bounds: `learner.settings.GuardSettings.to_config()`."""

    holdout_every: int  # one event in N (by event id hash) is held out, never trained on; 0: no guardrail
    holdout_size: int  # each check scores these against the full catalogue twice
    margin: float  # refuse an update whose hold-out loss is worse by more than this fraction


@dataclass(frozen=True)
class Outcome:
    applied: int
    duplicates: int
    unknown: int
    version: int | None  # published version, None if nothing was published
    rejected: bool = False


def example_of(e: FeedbackEvent, history: np.ndarray, item: int) -> Example:
    """Eq. 31-32's two signals: ratings are explicit (graded around the 2.5 midpoint), the rest implicit."""
    if e.type is EventType.rating and e.value is not None:
        v = (e.value - 2.5) / 2.5
        return Example(history, item, EXPLICIT, max(v, 0.0), max(-v, 0.0), e.user_id)
    if e.type is EventType.dislike:
        return Example(history, item, IMPLICIT, 0.0, 1.0, e.user_id)
    return Example(history, item, IMPLICIT, 1.0, 0.0, e.user_id)


class Learner:
    """`history_store`: where the service keeps users' histories. When given, every batch reads its
    users' histories from it (the learner then trains on the histories the service serves from, and
    a restarted learner forgets nothing); `histories` is the learner's own copy otherwise (benches)."""

    def __init__(self, trainer: OnlineTrainer, item_ids: Sequence[str], histories: Mapping[str, Sequence[int]],
                 store: AdapterStore, base_model: str, signing_key: bytes | None, metrics: LearnerMetrics,
                 guard: GuardConfig, history_cap: int = 200,
                 history_store: HistoryStore | None = None) -> None:  # fmt: skip
        self.trainer, self.store, self.base_model, self.key = trainer, store, base_model, signing_key
        self.metrics, self.guard, self.history_cap = metrics, guard, history_cap
        self.item_index = {x: i for i, x in enumerate(item_ids)}
        self.histories = {u: list(h)[-history_cap:] for u, h in histories.items()}
        self.history_store = history_store
        self.holdout: deque[Example] = deque(maxlen=guard.holdout_size)
        self.published_adapter = copy.deepcopy(trainer.adapter)  # what the service serves: the guardrail's baseline
        self.version = 0
        self.events_seen = 0

    @property
    def published_state(self) -> dict[str, np.ndarray]:
        return self.published_adapter.tensors()

    async def process(self, events: Sequence[FeedbackEvent]) -> Outcome:
        """All or nothing: if the publish fails, the trainer and the histories are as before and the
        caller retries the same events (Kafka offsets are committed only after this returns)."""
        t = time.perf_counter()
        seen = await self.store.applied([e.event_id for e in events])
        fresh, dupes, ids = [], 0, set()
        for e, done in zip(events, seen, strict=True):
            if done or e.event_id in ids:
                dupes += 1
            else:
                fresh.append(e)
                ids.add(e.event_id)
        self.metrics.duplicates.inc(dupes)
        outcome = Outcome(0, dupes, 0, None)
        if fresh:
            outcome = await self._update(fresh, dupes)
        self.metrics.batch_seconds.observe(time.perf_counter() - t)
        return outcome

    async def _histories_before(self, events: Sequence[FeedbackEvent]) -> Mapping[str, Sequence[int]]:
        """Each user's history before the batch. The shared store already holds the batch's positives
        (the service appends them before the learner sees them): entries from the user's first event
        of the batch on are left out."""
        if self.history_store is None:
            return self.histories
        first: dict[str, int] = {}
        for e in events:
            first[e.user_id] = min(first.get(e.user_id, e.timestamp), e.timestamp)
        out = {}
        for user, t in first.items():
            entries = await self.history_store.recent(user, self.history_store.max_len)
            out[user] = [self.item_index[i] for i, ts in entries if ts < t and i in self.item_index]
        return out

    def _examples(
        self, events: Sequence[FeedbackEvent], before: Mapping[str, Sequence[int]]
    ) -> tuple[list[Example], list[Example], dict[str, list[int]], int]:
        """Training and held-out examples, each against the user's history just before its event, and
        the histories as they will be once the batch is committed (nothing here changes the learner)."""
        train: list[Example] = []
        held: list[Example] = []
        grown: dict[str, list[int]] = {}
        unknown = 0
        for e in events:
            item = self.item_index.get(e.item_id)
            if item is None:
                unknown += 1
                continue
            history = grown.setdefault(e.user_id, list(before.get(e.user_id, [])))
            if history:  # the user model needs a history to read; a first event only starts one
                ex = example_of(e, np.asarray(history, np.int64), item)
                (held if _held_out(e.event_id, self.guard.holdout_every) else train).append(ex)
            if e.is_positive:
                history.append(item)
                del history[: -self.history_cap]
        return train, held, grown, unknown

    async def _update(self, events: Sequence[FeedbackEvent], dupes: int) -> Outcome:
        train, held, grown, unknown = self._examples(events, await self._histories_before(events))
        snap = self.trainer.snapshot()
        holdout = deque([*self.holdout, *held], maxlen=self.holdout.maxlen)  # joins the learner on commit
        try:
            if train:
                self._record(await anyio.to_thread.run_sync(self.trainer.step, train))
            self.trainer.observe(*_positives(events, self.item_index))
            ids = [e.event_id for e in events]
            if await anyio.to_thread.run_sync(self._passes_guard, list(holdout)):
                version: int | None = await self._publish(ids)
                rejected = False
            else:
                self.trainer.restore(snap)  # refuse the update, keep serving the last good adapter
                await self.store.discard(ids)
                self.metrics.rejected.inc()
                version, rejected = None, True
        except Exception:
            self.trainer.restore(snap)
            self.metrics.publish_errors.inc()
            raise
        if self.history_store is None:
            self.histories.update(grown)
        self.holdout = holdout
        self.events_seen += len(events)
        for e in events:
            self.metrics.events.labels(e.type.value).inc()
        self.metrics.unknown.inc(unknown)
        return Outcome(0 if rejected else len(events) - unknown, dupes, unknown, version, rejected)

    def _record(self, stats: StepStats) -> None:
        if stats.skipped:
            self.metrics.skipped.inc()
            return
        self.metrics.loss.set(stats.loss)
        self.metrics.ewc.set(stats.ewc)
        self.metrics.updated_fraction.set(stats.updated_fraction)
        self.metrics.lr.set(stats.lr)

    def _passes_guard(self, held: list[Example]) -> bool:
        if not held:
            return True
        candidate = self.trainer.evaluate(held)
        current = self.trainer.evaluate(held, self.published_adapter)
        self.metrics.holdout_loss.set(min(candidate, current))
        passes = candidate <= current + self.guard.margin * abs(current)
        if not passes:
            log.warning("update_refused_by_guardrail", holdout_loss=round(candidate, 5),
                        published_loss=round(current, 5), margin=self.guard.margin, holdout=len(held))  # fmt: skip
        return passes

    async def _publish(self, event_ids: list[str]) -> int:
        version = max(self.version, await self.store.current()) + 1
        tensors = self.trainer.state()
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        manifest = Manifest(version, self.base_model, shapes, self.events_seen + len(event_ids))
        await self.store.publish(version, encode(tensors, manifest, self.key), event_ids)
        self.version = version
        self.published_adapter.load_tensors(tensors)
        self.metrics.published.inc()
        self.metrics.version.set(version)
        log.info("adapter_published", version=version, events=len(event_ids))
        return version


def _positives(events: Sequence[FeedbackEvent], index: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Items and timestamps of the known items' positive events (what popularity counts)."""
    pairs = [(index[e.item_id], e.timestamp or time.time()) for e in events if e.is_positive and e.item_id in index]
    return np.array([i for i, _ in pairs], np.int64), np.array([t for _, t in pairs], np.float64)


def _held_out(event_id: str, every: int) -> bool:
    return every > 0 and int(hashlib.blake2b(event_id.encode(), digest_size=4).hexdigest(), 16) % every == 0
