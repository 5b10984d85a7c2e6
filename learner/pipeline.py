"""One micro-batch of feedback, start to finish: drop events already applied, turn the rest into
examples against each user's history, take an online step, check the hold-out guardrail, publish.

Used by the Kafka consumer (`learner.consumer`) and by the in-process learner of the embedded default.
Every event is either applied (it went into a published adapter) or discarded with the update the
guardrail refused; both are recorded in the adapter store in one transaction with the publish, so a
learner restarted from older Kafka offsets skips them.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import anyio
import numpy as np
import structlog
import torch

from common.adapter import Manifest, encode
from common.adapter_store import AdapterStore
from common.events import WINDOW_SEP, EventType, FeedbackEvent, joined_fingerprint
from learner.metrics import LearnerMetrics
from learner.trainer import EXPLICIT, IMPLICIT, ITEM_ROWS, Example, OnlineTrainer, StepStats
from models.adapter import placed_rows
from retrieval.catalog import NewItem
from retrieval.history import HistoryStore
from retrieval.item_log import START, ItemLog
from retrieval.user_models import History

log = structlog.get_logger()


@dataclass(frozen=True)
class GuardConfig:
    """The hold-out guardrail. Defaults and bounds: `learner.settings.GuardSettings.to_config()`."""

    holdout_every: int  # one event in N (by event id hash) is held out, never trained on; 0: no guardrail
    holdout_size: int  # each check scores these against the full catalogue (`Held`)
    margin: float  # refuse an update whose hold-out loss is worse by more than this fraction


class _Joined:
    """A user's history window as `window_fingerprint` reads it (external ids joined), moved along item
    by item: fingerprinting a batch's events then costs a hash each, not a join of a whole window."""

    def __init__(self, ids: list[str], size: int) -> None:
        self.text, self.n, self.size = WINDOW_SEP.join(ids), len(ids), size

    def push(self, item_id: str) -> None:
        self.text = f"{self.text}{WINDOW_SEP}{item_id}" if self.n else item_id
        self.n += 1
        if self.n > self.size:
            self.text = self.text[self.text.index(WINDOW_SEP) + 1 :]
            self.n -= 1

    def fingerprint(self) -> str:
        return joined_fingerprint(self.text)


class Prepared(NamedTuple):
    """A micro-batch turned into examples, before anything is learnt from it."""

    train: list[Example]
    held: list[Example]  # the guardrail's, never trained on
    grown: dict[str, list[int]]  # the batch's users' histories as they will be once it is committed
    unknown: int  # events on items the learner does not know
    positives: list[int]  # the known items' positive events and their times: what popularity counts
    times: list[float]


@dataclass(frozen=True)
class Outcome:
    applied: int
    duplicates: int
    unknown: int
    version: int | None  # published version, None if nothing was published
    rejected: bool = False


def example_of(e: FeedbackEvent, history: History, item: int, served: np.ndarray | None = None) -> Example:
    """Eq. 31-32's two signals: ratings are explicit (graded around the 2.5 midpoint), the rest implicit."""
    if e.type is EventType.rating and e.value is not None:
        v = (e.value - 2.5) / 2.5
        return Example(history, item, EXPLICIT, max(v, 0.0), max(-v, 0.0), e.user_id, served)
    if e.type is EventType.dislike:
        return Example(history, item, IMPLICIT, 0.0, 1.0, e.user_id, served)
    return Example(history, item, IMPLICIT, 1.0, 0.0, e.user_id, served)


ContentVectors = Callable[[Sequence[NewItem]], torch.Tensor]  # new items -> (m, D) content-only vectors


class Learner:
    """`history_store`: where the service keeps users' histories. When given, every batch reads its
    users' histories from it (the learner then trains on the histories the service serves from, and
    a restarted learner forgets nothing); `histories` is the learner's own copy otherwise (benches).

    `item_log`: the service's log of items added after training, read from the start and again whenever
    a batch names an item the learner does not know; `content` gives those items their vectors."""

    def __init__(self, trainer: OnlineTrainer, item_ids: Sequence[str], histories: Mapping[str, Sequence[int]],
                 store: AdapterStore, base_model: str, signing_key: bytes | None, metrics: LearnerMetrics,
                 guard: GuardConfig, history_cap: int = 200, history_store: HistoryStore | None = None,
                 item_log: ItemLog | None = None, content: ContentVectors | None = None) -> None:  # fmt: skip
        self.trainer, self.store, self.base_model, self.key = trainer, store, base_model, signing_key
        self.metrics, self.guard, self.history_cap = metrics, guard, history_cap
        self.item_ids = list(item_ids)
        self.trained_items = len(self.item_ids)
        self.item_index = {x: i for i, x in enumerate(item_ids)}
        self.item_log, self.content, self._log_cursor = item_log, content, START
        self.dim = trainer.items.shape[1]  # of a user vector
        # Python ints (`tolist`): numpy scalars made every lookup by history item several times slower
        self.histories = {u: np.asarray(h[-history_cap:], np.int64).tolist() for u, h in histories.items()}
        self.history_store = history_store
        self.holdout: deque[Held] = deque(maxlen=guard.holdout_size)
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
        fresh = await self._fresh(events)
        dupes = len(events) - len(fresh)
        self.metrics.duplicates.inc(dupes)
        outcome = Outcome(0, dupes, 0, None)
        if not self.item_index.keys() >= {e.item_id for e in fresh}:
            await self.catch_up_items()  # a failure here fails the batch: it is retried, not dropped
        if fresh:
            outcome = await self._update(fresh, dupes)
        self.metrics.batch_seconds.observe(time.perf_counter() - t)
        return outcome

    async def _fresh(self, events: Sequence[FeedbackEvent]) -> list[FeedbackEvent]:
        """The events not applied before, each id once."""
        ids = [e.event_id for e in events]
        seen = await self.store.applied(ids)
        if not any(seen) and len(set(ids)) == len(ids):  # the usual batch: no copying event by event
            return list(events)
        fresh, kept = [], set()
        for e, done in zip(events, seen, strict=True):
            if not done and e.event_id not in kept:
                fresh.append(e)
                kept.add(e.event_id)
        return fresh

    async def catch_up_items(self) -> int:
        """Learn of the items appended to the item log since the last read; returns how many."""
        if self.item_log is None or self.content is None:
            return 0
        items, cursor = await self.item_log.read(self._log_cursor)
        new = list({i.item_id: i for i in items if i.item_id not in self.item_index}.values())
        if new:
            vectors = await anyio.to_thread.run_sync(self.content, new)
            self.trainer.add_items(vectors)
            self.published_adapter.grow(len(new))
            self._forget_published_losses()  # a larger catalogue: every full-softmax loss changes
            for it in new:
                self.item_index[it.item_id] = len(self.item_ids)
                self.item_ids.append(it.item_id)
            self.metrics.items_added.inc(len(new))
            log.info("learner_items_added", items=len(new), known=len(self.item_ids))
        self._log_cursor = cursor
        return len(new)

    def load(self, tensors: Mapping[str, np.ndarray], items: Sequence[str]) -> None:
        """Continue from published `tensors` whose rows after the trained ones are `items` (by id): rows
        are placed by id, and an item the learner does not know (its log entry is gone) is left out."""
        out = self.trainer.state()
        src, dst = placed_rows(self.trained_items, items, self.item_index, len(self.item_ids))
        for k, v in tensors.items():
            if k in ITEM_ROWS or k == "log_pop":
                out[k][dst] = v[src]
            else:
                out[k] = np.array(v)
        if len(src) < self.trained_items + len(items):
            log.warning("adapter_rows_dropped", rows=self.trained_items + len(items) - len(src),
                        reason="items not in the item log")  # fmt: skip
        self.trainer.load(out)
        self.published_adapter.load_tensors(out)
        self._forget_published_losses()

    def _forget_published_losses(self) -> None:
        self.holdout = deque((replace(h, published=None) for h in self.holdout), maxlen=self.holdout.maxlen)

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

    def _examples(self, events: Sequence[FeedbackEvent], before: Mapping[str, Sequence[int]]) -> Prepared:
        """The batch as examples, each against the user's history just before its event (nothing here
        changes the learner)."""
        out = Prepared([], [], {}, 0, [], [])
        unknown = 0
        window = self.trainer.users.model.window  # all of a history the user model reads
        joined: dict[str, _Joined] = {}  # the windows of users whose events carry a served vector
        for e in events:
            item = self.item_index.get(e.item_id)
            if item is None:
                unknown += 1
                continue
            history = out.grown.get(e.user_id)
            if history is None:  # not setdefault: it would copy the history at every event
                history = out.grown[e.user_id] = list(before.get(e.user_id, ()))
            if history:  # the user model needs a history to read; a first event only starts one
                recent = history[-window:]
                ex = example_of(e, recent, item, self._served(e, recent, joined))
                (out.held if _held_out(e.event_id, self.guard.holdout_every) else out.train).append(ex)
            if e.is_positive:
                history.append(item)
                del history[: -self.history_cap]
                if e.user_id in joined:
                    joined[e.user_id].push(e.item_id)
                out.positives.append(item)
                out.times.append(e.timestamp or time.time())
        return out._replace(unknown=unknown)

    def _served(self, e: FeedbackEvent, window: Sequence[int], joined: dict[str, _Joined]) -> np.ndarray | None:
        """The user vector the service logged with the event, if it read exactly `window` under this
        learner's model (else the learner encodes the user itself). `joined`: the batch's users'
        windows as the fingerprint reads them, kept up to date by the caller."""
        s = e.served
        if s is None or s.model != self.base_model:
            return None
        if e.user_id not in joined:
            size = min(self.history_cap, self.trainer.users.model.window)
            joined[e.user_id] = _Joined([self.item_ids[i] for i in window], size)
        if s.window != joined[e.user_id].fingerprint():
            return None
        vector = s.array()
        return vector if len(vector) == self.dim else None

    async def _update(self, events: Sequence[FeedbackEvent], dupes: int) -> Outcome:
        batch = self._examples(events, await self._histories_before(events))
        snap = self.trainer.snapshot()
        encoded = await anyio.to_thread.run_sync(self._encoded, batch.held)
        entries = [*self.holdout, *encoded][-self.guard.holdout_size :]  # join the learner on commit
        try:
            for stats in await anyio.to_thread.run_sync(self._steps, batch.train):
                self._record(stats)
            self.trainer.observe(np.array(batch.positives, np.int64), np.array(batch.times, np.float64))
            ids = [e.event_id for e in events]
            passes, scored = await anyio.to_thread.run_sync(self._guard, entries)
            if passes:
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
            self.histories.update(batch.grown)
        self.holdout = deque(scored, maxlen=self.holdout.maxlen)
        self.events_seen += len(events)
        for kind, n in Counter(e.type.value for e in events).items():
            self.metrics.events.labels(kind).inc(n)
        self.metrics.unknown.inc(batch.unknown)
        return Outcome(0 if rejected else len(events) - batch.unknown, dupes, batch.unknown, version, rejected)

    def _steps(self, train: list[Example]) -> list[StepStats]:
        n = self.trainer.config.step_size
        return [self.trainer.step(train[s : s + n]) for s in range(0, len(train), n)]

    def _record(self, stats: StepStats) -> None:
        if stats.skipped:
            self.metrics.skipped.inc()
            return
        self.metrics.loss.set(stats.loss)
        self.metrics.ewc.set(stats.ewc)
        self.metrics.updated_fraction.set(stats.updated_fraction)
        self.metrics.lr.set(stats.lr)

    def _encoded(self, held: list[Example]) -> list[Held]:
        if not held:
            return []
        # no user ids: each example's own (older) window, kept out of the users' vector cache
        base = self.trainer.base_of(held, cached=False)
        return [Held(e, b) for e, b in zip(held, base, strict=True)]

    def _guard(self, entries: list[Held]) -> tuple[bool, list[Held]]:
        """Whether the trained adapter may be published (its hold-out loss no worse than the published
        one's by more than the margin), and the entries with their losses under what will be served."""
        if not entries:
            return True, entries
        held, base = [h.example for h in entries], torch.stack([h.base for h in entries])
        candidate = self.trainer.full_losses(held, base=base)
        published = torch.tensor([np.nan if h.published is None else h.published for h in entries])
        if todo := [j for j, h in enumerate(entries) if h.published is None]:
            published[todo] = self.trainer.full_losses([held[j] for j in todo], self.published_adapter, base[todo])
        new, current = float(candidate.mean()), float(published.mean())
        self.metrics.holdout_loss.set(min(new, current))
        passes = new <= current + self.guard.margin * abs(current)
        if not passes:
            log.warning("update_refused_by_guardrail", holdout_loss=round(new, 5), published_loss=round(current, 5),
                        margin=self.guard.margin, holdout=len(held))  # fmt: skip
        served = candidate if passes else published
        return passes, [replace(h, published=float(x)) for h, x in zip(entries, served, strict=True)]

    async def _publish(self, event_ids: list[str]) -> int:
        version = max(self.version, await self.store.current()) + 1
        tensors = self.trainer.state()
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        manifest = Manifest(version, self.base_model, shapes, self.events_seen + len(event_ids),
                            items=self.item_ids[self.trained_items :])  # fmt: skip
        await self.store.publish(version, encode(tensors, manifest, self.key), event_ids)
        self.version = version
        self.published_adapter.load_tensors(tensors)
        self.metrics.published.inc()
        self.metrics.version.set(version)
        log.info("adapter_published", version=version, events=len(event_ids))
        return version


@dataclass(frozen=True)
class Held:
    """A held-out example with its frozen user vector (encoded once: the model never changes under a
    learner) and its loss under the published adapter (None: not scored since that adapter last changed
    otherwise than by a publish the guard passed). The guard scores every entry under both adapters at
    every batch; what it already knows it does not score again."""

    example: Example
    base: torch.Tensor  # (D,)
    published: float | None = None


def _held_out(event_id: str, every: int) -> bool:
    return every > 0 and zlib.crc32(event_id.encode()) % every == 0
