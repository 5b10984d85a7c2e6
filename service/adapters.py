"""Hot swap of the learner's adapter, version-gated (as Gorse swaps models by id): the service loads a
version only if it is newer than the one it serves, its signature verifies, it was trained for this
base model and its shapes match. It then writes the version's item rows (corrected vectors and
streaming popularity) into the index where they moved, and only then replaces the one reference that
requests read the user-side map and item biases from.

What a request sees while the rows are being written: each point is upserted whole, so an item scores
with its old row or its new one, next to the old version's user map. One version's step moves few
rows by a learning rate's worth (importance-selected, momentum SGD), so a ranking that mixes two
consecutive versions' rows is one the learner passed through on its way. The exception is the first
version after a start: the streaming popularity replaces the training count for nearly every item, so
for that one write (seconds on 10k items) requests mix old and new popularity across items. If the
index refuses the write, the old version keeps serving and the next poll tries again.

A refused version is counted by reason and never retried; the last good adapter keeps serving. Notices
arrive on Redis pub/sub (or the in-process store's event); a poll every `poll_s` covers notices lost
while Redis was away.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import RetryCallState, retry, retry_if_exception_type, wait_exponential

from common.adapter import AdapterRejectedError, channel, decode
from common.adapter_store import AdapterStore, MemoryAdapterStore
from models.adapter import AdapterView, ServingAdapter
from retrieval.catalog import Catalogue
from service.metrics import Metrics

log = structlog.get_logger()
_REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def _log_resubscribe(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning("adapter_notices_lost", error=str(error), attempt=state.attempt_number, retry_in_s=state.upcoming_sleep)


class AdapterWatcher:
    def __init__(self, store: AdapterStore, key: bytes | None, base_model: str, shapes: dict[str, tuple[int, ...]],
                 metrics: Metrics, catalogue: Catalogue, poll_s: float = 1.0) -> None:  # fmt: skip
        self.store, self.key, self.base_model, self.shapes = store, key, base_model, shapes
        self.metrics, self.poll_s, self.catalogue = metrics, poll_s, catalogue
        dim, rank, n = shapes["B"][0], shapes["A"][0], shapes["item_bias"][0]
        self.expect = ServingAdapter.shapes_for(dim, n, rank)  # rows grow with the items added since training
        self.current = AdapterView.identity(dim, catalogue.vectors[:n, -1], rank)
        self.rejected: set[int] = set()
        self.notice = asyncio.Event()

    async def refresh(self) -> bool:
        """Load the published version if it is newer and valid; True if it swapped."""
        try:
            version = await self.store.current()
            if version <= self.current.version or version in self.rejected:
                return False
            fields = await self.store.fetch(version)
        except Exception as e:  # store unreachable: keep serving what we have
            self.metrics.dependency_errors.labels("adapter_store").inc()
            log.warning("adapter_store_unreachable", error=str(e))
            return False
        try:
            if fields is None:
                raise AdapterRejectedError("missing", f"version {version} has no data")
            manifest, tensors = decode(fields, self.key, self.expect, self.current.version)
            if manifest.base_model != self.base_model:
                raise AdapterRejectedError("base_model", f"{manifest.base_model} != {self.base_model}")
        except AdapterRejectedError as e:
            self.rejected.add(version)
            self.metrics.adapter_rejections.labels(e.reason).inc()
            log.warning("adapter_rejected", version=version, reason=e.reason, detail=str(e))
            return False
        view = AdapterView(manifest.version, tensors, manifest.items)
        try:
            moved = await anyio.to_thread.run_sync(self.catalogue.correct, view.item_rows)
        except Exception as e:  # index unreachable: keep serving the old version, retry at the next poll
            self.metrics.dependency_errors.labels("index").inc()
            log.warning("adapter_items_not_indexed", version=version, error=str(e))
            return False
        self.current = view  # the one reference requests read
        self.metrics.items_corrected.inc(moved)
        self.metrics.adapter_swaps.inc()
        self.metrics.adapter_version.set(manifest.version)
        log.info("adapter_swapped", version=manifest.version, events_seen=manifest.events_seen)
        return True

    async def run(self, redis: Redis | None, prefix: str) -> None:
        listener = asyncio.create_task(self._listen(redis, prefix)) if redis is not None else None
        if isinstance(self.store, MemoryAdapterStore):
            self.notice = self.store.published
        try:
            while True:
                await self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.notice.wait(), self.poll_s)
                self.notice.clear()
        finally:
            if listener is not None:
                listener.cancel()

    async def _listen(self, redis: Redis, prefix: str) -> None:
        try:
            await self._subscribed(redis, prefix)
        except Exception as e:  # not an outage (say, an ACL refusing SUBSCRIBE): the poll alone keeps us current
            log.error("adapter_notices_stopped", error=str(e))

    @retry(retry=retry_if_exception_type(_REDIS_AWAY), wait=wait_exponential(multiplier=0.5, max=5.0),
           before_sleep=_log_resubscribe, reraise=True)  # fmt: skip
    async def _subscribed(self, redis: Redis, prefix: str) -> None:
        """Pub/sub notices, resubscribing after Redis goes away (the poll keeps us current meanwhile). The
        wait grows over the watcher's life, up to its cap: the poll, not the notice, bounds staleness."""
        async with redis.pubsub() as ps:
            await ps.subscribe(channel(prefix))
            async for message in ps.listen():
                if message.get("type") == "message":
                    self.notice.set()
