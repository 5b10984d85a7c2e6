"""The service's state, built once at start-up (`build_state`, as vLLM's `init_app_state`) and read by the
routes through `get_state`: one typed object instead of attributes scattered over `app.state`.

What a trained model changes lives in `Serving`: its `current` Recommender is replaced whole when the
trained model is swapped in for the cold-start one, so a request reads one model's bundle throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import structlog
import torch
from fastapi import FastAPI, Request
from redis.asyncio import Redis

from common import local_state
from common.adapter_store import AdapterStore, MemoryAdapterStore, RedisAdapterStore
from models.adapter import ServingAdapter
from retrieval.catalog import NewItem, items_collection
from retrieval.history import (
    HistoryStore,
    MemoryHistoryStore,
    RedisHistoryStore,
    SqliteHistoryStore,
    dataset_histories,
)
from retrieval.item_log import START, FileItemLog, ItemLog, RedisItemLog
from service.adapters import AdapterWatcher
from service.components import Components, NotReadyError, build_cold_start, build_components, with_context
from service.explain import Explainer
from service.feedback import (
    EventIdDeduper,
    EventSink,
    FeedbackIngest,
    Forwarder,
    InProcessSink,
    KafkaEventSink,
    MemoryDeduper,
    RedisDeduper,
    SqliteDeduper,
)
from service.llm_explain import bundled_gguf, make_explainer
from service.llm_rerank import LlamaCppReranker
from service.metrics import Metrics, OnlineHitRate
from service.ratelimit import TokenBuckets
from service.recommender import Recommender
from service.settings import Settings
from service.spool import Spool
from training.checkpoint import WEIGHTS, checkpoint_version
from training.text_embeddings import TextEncoder

log = structlog.get_logger()


class Serving:
    """The model being served. `swap` replaces it whole (bundle, explainer, adapter watcher): a request
    holds the Recommender it started with, so it never mixes two models' vectors."""

    def __init__(self, current: Recommender, watcher_task: asyncio.Task[None] | None) -> None:
        self.current, self._watcher_task = current, watcher_task
        self.building = ""  # what is still being built in the background, for /readyz and the logs
        self._retiring: set[asyncio.Task[None]] = set()
        self.embedded = asyncio.Event()  # the cold-start content vectors are in (or could not be built)

    async def swap(self, new: Recommender, watcher_task: asyncio.Task[None] | None,
                   drop_replaced: bool = False) -> None:  # fmt: skip
        """`drop_replaced`: delete the old model's item collection once no request holds it (a model that
        replaces another for good, as a fine-tune's does)."""
        old, old_task = self.current, self._watcher_task
        self.current, self._watcher_task = new, watcher_task
        await _stop(old_task)
        shared = old.c.engine is new.c.engine
        drop = items_collection(old.c.model_version) if drop_replaced and shared else None
        retiring = asyncio.create_task(_retire(old, close_engine=not shared, drop=drop))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)  # a finished retirement holds no bundle
        log.info("model_swapped", model_version=new.c.model_version, items=len(new.c.catalogue.payloads))

    async def retired(self) -> None:
        """Until every replaced model's bundle is closed (no request holds one)."""
        await asyncio.gather(*self._retiring)

    async def close(self) -> None:
        await _stop(self._watcher_task)
        await self.retired()
        await _retire(self.current, close_engine=True)


async def _retire(old: Recommender, close_engine: bool, drop: str | None = None) -> None:
    """Close a replaced model's bundle once the requests that still hold it have finished (its index
    engine only when the new bundle does not share it; `drop`: a collection of it to delete then)."""
    while old.active:
        await asyncio.sleep(0.05)
    await old.explainer.close()
    if close_engine:
        old.c.close()
    elif drop is not None and old.c.engine is not None:
        try:
            await anyio.to_thread.run_sync(old.c.engine.drop, drop)
        except Exception as e:  # a leftover collection costs disk, not service
            log.warning("old_index_not_dropped", collection=drop, error=str(e))


@dataclass(frozen=True)
class ServiceState:
    settings: Settings
    metrics: Metrics
    serving: Serving
    history: HistoryStore
    redis: Redis | None
    sink: EventSink
    forwarder: Forwarder
    feedback: FeedbackIngest
    text: TextEncoder
    adapter_store: AdapterStore
    write_buckets: TokenBuckets
    online: OnlineHitRate
    item_log: ItemLog  # POST /items, durable: replayed into every bundle, read by the learner
    items_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one catalogue change at a time
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def recommender(self) -> Recommender:
        return self.serving.current

    async def load_trained(self, context: bool = True, replacing: bool = False, drop_replaced: bool = False) -> None:
        """Swap in the trained model (the checkpoint at `settings.model_dir` and its index; `context`:
        with the RAG collection, when enabled). `replacing` another trained model (a fine-tune's): the
        context only if its collection exists; `drop_replaced`: the old item collection is deleted once
        no request holds it (no other replica can be serving it)."""
        current = self.recommender.c
        engine = current.engine if not current.model.cold_start else None
        build = functools.partial(build_components, self.settings, self.text, context, engine,
                                  build_context=not replacing)  # fmt: skip
        await self._swap_in(build, drop_replaced)

    async def add_context(self) -> None:
        """RAG context for the served trained model: the same bundle (model, catalogue, index engine)
        with the context collection added (embedded here if missing), nothing loaded again."""
        if self.settings.rag.enabled and not self.recommender.c.model.cold_start:
            await self._swap_in(functools.partial(with_context, self.recommender.c, self.settings, self.text))

    async def build_missing_context(self) -> None:
        """A restart whose RAG collection is gone (a new dataset fingerprint, a wiped index) serves at once
        without context while the collection is embedded (minutes) in a worker thread."""
        self.serving.building = "embedding RAG context"
        try:
            await self.add_context()
        except Exception:  # the context-free model keeps serving
            log.exception("context_build_failed")
        finally:
            self.serving.building = ""

    async def embed_cold_start(self) -> None:
        """Popularity alone -> content vectors, while no trained model is served yet."""
        data = self.recommender.c.catalogue.data  # loaded already, with any items added since
        try:
            await self._swap_in(functools.partial(build_cold_start, self.settings, self.text, data))
        except Exception as e:  # popularity keeps serving; the trained model will still come
            log.warning("cold_start_embedding_failed", error=str(e))
        self.serving.embedded.set()  # not when cancelled: a stopping service starts no training

    async def _swap_in(self, build: Callable[[], Components], drop_replaced: bool = False) -> None:
        """Build a bundle off the event loop, then, with POST /items held, replay the added items into it
        and swap: the new bundle serves every item the old one did. A cold-start bundle never replaces a
        trained model."""
        # abandoned on cancel: a stopping service does not wait for a half-built bundle (the thread dies
        # with the process; an index version is invisible until published)
        c = await anyio.to_thread.run_sync(build, abandon_on_cancel=True)
        async with self.items_lock:
            if c.model.cold_start and not self.recommender.c.model.cold_start:
                c.close()
                return
            await anyio.to_thread.run_sync(c.catalogue.add, (await _added_items(self.item_log))[0])
            s = self.settings
            recommender, task = await _recommender(s, self.metrics, self.adapter_store, self.redis, self.history, c)
            await self.serving.swap(recommender, task, drop_replaced)
        await _seed(self.history, c)

    async def close(self) -> None:
        for task in reversed(self.tasks):  # the newest first: a later task may wait on an earlier one
            await _stop(task)
        await self.sink.close()
        await self.serving.close()
        if self.redis is not None:
            await self.redis.aclose()


def get_state(request: Request) -> ServiceState:
    """The routes' accessor (a FastAPI dependency)."""
    state: ServiceState = request.app.state.service
    return state


def app_state(app: FastAPI) -> ServiceState:
    """The same for code holding the app (the CLI, tests)."""
    state: ServiceState = app.state.service
    return state


async def build_state(settings: Settings, metrics: Metrics, adapter_store: AdapterStore | None) -> ServiceState:
    # requests run small matrix products: one torch thread each beats two threads fighting over 2 cores
    torch.set_num_threads(settings.torch_threads)
    text = await anyio.to_thread.run_sync(TextEncoder, settings.cache_dir)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    item_log = item_log_of(settings, redis)
    added, cursor = await _added_items(item_log)
    c = await anyio.to_thread.run_sync(_first_bundle, settings, text, added)
    history, deduper = _history_and_event_ids(settings, redis, metrics)
    sink: EventSink = KafkaEventSink(settings.kafka.bootstrap_servers, settings.kafka.topic,
                                     settings.kafka.request_timeout_ms) if settings.kafka.bootstrap_servers \
        else InProcessSink()  # fmt: skip
    spool = Spool(settings.feedback.spool_dir)
    forwarder = Forwarder(spool, sink, metrics)
    f = settings.feedback
    a = settings.adapter
    store = adapter_store or (RedisAdapterStore(redis, a.prefix, a.keep) if redis else MemoryAdapterStore(a.keep))
    recommender, task = await _recommender(settings, metrics, store, redis, history, c)
    state = ServiceState(
        settings, metrics, Serving(recommender, task), history, redis, sink, forwarder,
        FeedbackIngest(spool, forwarder, deduper, history, metrics, f.ack_wait_s), text, store,
        TokenBuckets(settings.api.write_rate_per_s, settings.api.write_burst), OnlineHitRate(metrics), item_log,
    )  # fmt: skip
    seeded = await _seed(history, c)
    state.tasks.append(asyncio.create_task(forwarder.run()))
    if redis is not None:  # other replicas write the same log: their items are served here too
        state.tasks.append(asyncio.create_task(_follow_items(state, cursor, settings.adapter.poll_s)))
        state.tasks.append(asyncio.create_task(_follow_model(state, settings.adapter.poll_s)))
    if c.model.cold_start:
        state.tasks.append(asyncio.create_task(state.embed_cold_start()))
    elif settings.rag.enabled and c.context is None:
        state.tasks.append(asyncio.create_task(state.build_missing_context()))
    log.info("service_started", model_version=c.model_version, cold_start=c.model.cold_start,
             items=len(c.catalogue.payloads), users_seeded=seeded, sink=sink.name, spool_pending=spool.pending,
             explainer=recommender.explainer.name)  # fmt: skip
    return state


def _history_and_event_ids(settings: Settings, redis: Redis | None,
                           metrics: Metrics) -> tuple[HistoryStore, EventIdDeduper]:  # fmt: skip
    """Redis when configured (shared by replicas); else in process, kept on disk under `state_dir`."""
    f = settings.feedback
    if redis is not None:
        return (RedisHistoryStore(redis, settings.history_prefix, settings.history_len),
                RedisDeduper(redis, f.dedupe_prefix, f.dedupe_ttl_s, metrics))  # fmt: skip
    if settings.state_dir is None:
        return MemoryHistoryStore(settings.history_len), MemoryDeduper()
    return (SqliteHistoryStore(local_state.connect(settings.state_dir), settings.history_len),
            SqliteDeduper(local_state.connect(settings.state_dir)))  # fmt: skip


def item_log_of(settings: Settings, redis: Redis | None) -> ItemLog:
    """The deployment's one item log: a Redis stream when Redis is configured (every replica and the
    Kafka learner read it), else the file beside the service's other local state."""
    if redis is not None:
        return RedisItemLog(redis, settings.items_stream)
    return FileItemLog(settings.added_items_log)


def _first_bundle(settings: Settings, text: TextEncoder, added: Sequence[NewItem]) -> Components:
    """The trained model when there is one; else, where allowed, popularity alone (seconds); then the
    items added since training, in the order they were added (so the same internal ids)."""
    try:
        c = build_components(settings, text, build_context=False)  # a missing context: built once serving
    except NotReadyError:
        if not settings.cold_start.enabled or (settings.model_dir / "model.safetensors").is_file():
            raise
        log.info("serving_cold_start", reason="no trained model yet", dataset=settings.cold_start.dataset)
        c = build_cold_start(settings, None)
    c.catalogue.add(added)
    return c


async def _recommender(
    s: Settings, metrics: Metrics, store: AdapterStore, redis: Redis | None, history: HistoryStore, c: Components
) -> tuple[Recommender, asyncio.Task[None] | None]:
    """A Recommender for bundle `c`, with its explainer, re-ranker and (for a trained model) the adapter
    watcher, already caught up with the published adapter."""
    explainer: Explainer = await anyio.to_thread.run_sync(make_explainer, s.explain, c.catalogue, metrics)
    reranker = None
    if s.rerank.enabled and not c.model.cold_start:
        reranker = await anyio.to_thread.run_sync(LlamaCppReranker, s.rerank.gguf_path or bundled_gguf())
    watcher, task = None, None
    if c.base_model is not None:
        shapes = ServingAdapter.shapes(c.base_model.dim, c.base_model.trained_items, s.adapter.rank)
        watcher = AdapterWatcher(store, s.adapter.key(), c.model_version, shapes, metrics, c.catalogue,
                                 s.adapter.poll_s)  # fmt: skip
        await watcher.refresh()
        task = asyncio.create_task(watcher.run(redis, s.adapter.prefix))
    recommender = Recommender(c, history, explainer, reranker=reranker, rerank_pool=s.rerank.pool,
                              adapters=watcher, user_refresh_every=s.user_refresh_every)  # fmt: skip
    return recommender, task


async def add_items(state: ServiceState, new: list[NewItem]) -> list[str]:
    """POST /items: first the item log (what is acknowledged survives a restart and reaches the
    learner), then the catalogue and the index. Raises ItemsNotDurableError when the log refuses."""
    async with state.items_lock:
        catalogue = state.serving.current.c.catalogue
        unknown = [i for i in new if i.item_id not in catalogue.item_index]
        try:
            await state.item_log.append(unknown)
        except Exception as e:
            state.metrics.dependency_errors.labels("item_log").inc()
            raise ItemsNotDurableError(str(e)) from e
        return await anyio.to_thread.run_sync(catalogue.add, unknown)


class ItemsNotDurableError(RuntimeError):
    """The item log could not be written: nothing was added, the client retries."""


async def _follow_items(state: ServiceState, cursor: str, poll_s: float) -> None:
    """Items other replicas added, read from the shared log after `cursor` every `poll_s` (as stale as
    an adapter may be) and added to the served catalogue; the ones this replica knows already are skipped."""
    while True:
        try:
            items, cursor = await state.item_log.read(cursor)
            if items:
                async with state.items_lock:
                    await anyio.to_thread.run_sync(state.serving.current.c.catalogue.add, items)
        except Exception as e:  # Redis away: retried at the next poll, from the same cursor
            log.warning("item_log_unreadable", error=str(e))
        await asyncio.sleep(poll_s)


async def _follow_model(state: ServiceState, poll_s: float) -> None:
    """With Redis the deployment names the model it serves at `model_key` (the Kafka learner, after a
    fine-tune): every `poll_s`, a replica serving another one swaps in the shared model folder's
    checkpoint once the folder holds the named version. The old item collection is left to the learner,
    which drops it once every replica has moved on."""
    s = state.settings
    assert state.redis is not None
    checked: tuple[str, float] | None = None  # (name, weights' mtime) last found not to match: not hashed again
    while True:
        # asleep first: a service stopped right after its start is never cancelled inside a Redis command
        # (redis-py can miss a cancellation there, and the stop would wait on it)
        await asyncio.sleep(poll_s)
        try:
            raw = await state.redis.get(s.model_key)
            named = raw.decode() if isinstance(raw, bytes) else raw
            c = state.recommender.c
            if named and named != c.model_version and not c.model.cold_start:
                now = (named, (s.model_dir / WEIGHTS).stat().st_mtime)
                if now != checked and await anyio.to_thread.run_sync(checkpoint_version, s.model_dir) == named:
                    await state.load_trained(replacing=True)
                    log.info("model_followed", model_version=named, replaced=c.model_version)
                checked = now
        except Exception as e:  # Redis away, a folder mid-exchange: the served model keeps serving; retried
            log.warning("model_not_followed", error=str(e))


async def _added_items(item_log: ItemLog) -> tuple[list[NewItem], str]:
    """Every item added since training, oldest first, and the log's cursor after them. An unreadable log
    (Redis away at start-up) serves the trained catalogue, and says so: the next model swap reads it
    again, and a replica's follower from the start."""
    try:
        return await item_log.read()
    except Exception as e:
        log.warning("added_items_unreadable", error=str(e))
        return [], START


async def _seed(history: HistoryStore, c: Components) -> int:
    """Users the store does not know yet start from their dataset history (a no-op for known users)."""
    try:
        return await history.seed(dataset_histories(c.catalogue.data))
    except Exception as e:  # Redis down at startup: serve (cold start until it returns), do not crash
        log.warning("history_seed_failed", error=str(e))
        return 0


async def _stop(task: asyncio.Task[None] | None, wait_s: float = 5.0) -> None:
    """Cancel and wait for `task`, at most `wait_s`: one that misses its cancellation (a client library
    inside a network call) must not hold the service's stop."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await asyncio.wait_for(asyncio.shield(task), wait_s)
        except TimeoutError:
            log.warning("task_not_stopped", task=task.get_name(), waited_s=wait_s)
