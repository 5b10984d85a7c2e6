"""`python -m learner` (also `llm4rec learn`): the Kafka-consuming learner on the RECSYS_ settings."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import anyio
import structlog
from prometheus_client import start_http_server
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from common.adapter_store import RedisAdapterStore
from common.process import limit_malloc_arenas, refreeze
from learner.build import learner_from_settings, resume
from learner.consumer import run
from learner.fine_tune import PeriodicFineTune, fine_tune_folder, recover
from learner.metrics import LearnerMetrics
from learner.pipeline import Learner
from learner.settings import LearnerSettings
from retrieval.catalog import items_collection
from retrieval.engines import make_engine
from retrieval.history import RedisHistoryStore
from retrieval.item_log import RedisItemLog

log = structlog.get_logger()


async def main(settings: LearnerSettings) -> None:
    redis_url = settings.require_redis_url("the Kafka learner publishes adapters to Redis")  # before any start-up work
    for sig in (signal.SIGTERM, signal.SIGINT):  # until the loop can stop cleanly, a stop ends the process at once:
        signal.signal(sig, signal.SIG_DFL)  # nothing is in flight yet (also where SIGINT was ignored at start)
    await _wait_for_model(settings.model_dir)
    recover(settings)  # a fine-tune cut by a kill: its model folder and its events
    metrics = LearnerMetrics()
    if settings.learner_metrics_port:
        start_http_server(settings.learner_metrics_port, registry=metrics.registry)
    redis = Redis.from_url(redis_url)
    store = RedisAdapterStore(redis, settings.adapter.prefix, settings.adapter.keep)
    history = RedisHistoryStore(redis, settings.history_prefix, settings.history_len)
    items = RedisItemLog(redis, settings.items_stream)
    stop, new_model = _stop_on_signals(), asyncio.Event()
    tuner = _fine_tune(settings, redis, metrics, new_model)
    tasks = [asyncio.create_task(_set_when(stop, new_model)), *([asyncio.create_task(tuner.run())] if tuner else [])]
    b = settings.batch
    try:
        while not stop.is_set():  # once per model: a fine-tune that lands restarts the loop on the new one
            new_model.clear()  # before the build: a model landing meanwhile restarts the loop again
            learner = await anyio.to_thread.run_sync(learner_from_settings, settings, store, metrics, history, items)
            refreeze()  # the model, histories and Fisher outside the collector's walks (a replaced learner's freed)
            await _resume_when_redis_answers(learner)
            if tuner is not None:  # a kill between a fine-tune's exchange and its naming left the name behind
                await redis.set(settings.model_key, learner.base_model)
            await run(learner, settings.kafka, b.size, b.max_wait_ms, metrics, new_model,
                      max_batch_failures=b.max_failures, on_processed=tuner.record if tuner else None)  # fmt: skip
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
    finally:
        for task in tasks:
            task.cancel()
        await redis.aclose()
    log.info("learner_stopped")


def _fine_tune(settings: LearnerSettings, redis: Redis, metrics: LearnerMetrics,
               new_model: asyncio.Event) -> PeriodicFineTune | None:  # fmt: skip
    """The periodic fine-tune of the deployment's model (when on): a landed model is named in Redis for
    the replicas to load from the shared model folder, and this learner restarts on it. The item
    collection of the model before the replaced one is dropped then (every replica has long moved off it)."""
    folder = fine_tune_folder(settings)
    if settings.fine_tune.every_events == 0 or folder is None:
        return None
    replaced: list[str] = []

    async def name_it(old: str, new: str) -> None:
        await redis.set(settings.model_key, new)
        replaced.append(old)
        if len(replaced) > 1:
            await anyio.to_thread.run_sync(_drop_items, settings.index.location, replaced.pop(0))
        new_model.set()

    return PeriodicFineTune(settings, settings.fine_tune, folder / "children.log", name_it, metrics)


def _drop_items(location: str, version: str) -> None:
    engine = make_engine(location)
    try:
        engine.drop(items_collection(version))
    finally:
        engine.close()


async def _set_when(source: asyncio.Event, target: asyncio.Event) -> None:
    """A stop ends the consume loop as a new model does (the loop then sees the stop)."""
    await source.wait()
    target.set()


def _stop_on_signals(grace_s: float = 5.0) -> asyncio.Event:
    """SIGTERM or SIGINT (also where SIGINT was ignored at start) sets the returned event: the consume
    loop ends between batches, and offsets are committed only after publishing, so none are lost. A
    start-up retry or a publish retry that outlasts `grace_s`, or a second signal, is cancelled instead:
    its batch stays uncommitted and is redelivered, and the applied-event record makes that harmless."""
    loop, task, stop = asyncio.get_running_loop(), asyncio.current_task(), asyncio.Event()
    assert task is not None

    def on_signal(sig: signal.Signals) -> None:
        log.info("learner_stopping", signal=sig.name)
        if stop.is_set():
            task.cancel()
        stop.set()
        loop.call_later(grace_s, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop


async def _wait_for_model(model_dir: Path, poll_s: float = 5.0) -> None:
    """A learner started beside a service that is still training its first model waits for it."""
    if not (model_dir / "model.safetensors").is_file():
        log.info("learner_waiting_for_model", model_dir=str(model_dir))
    while not (model_dir / "model.safetensors").is_file():
        await asyncio.sleep(poll_s)


async def _resume_when_redis_answers(learner: Learner) -> None:
    """A learner started while Redis is away waits for it rather than exiting (a Redis that answers with
    an error is there: that error ends the start)."""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("redis_unreachable", error=str(error), attempt=state.attempt_number,
                    retry_in_s=state.upcoming_sleep)  # fmt: skip

    away = retry_if_exception_type((RedisConnectionError, RedisTimeoutError))
    retrying = AsyncRetrying(retry=away, wait=wait_exponential(multiplier=0.5, max=10.0), before_sleep=log_retry,
                             reraise=True)  # fmt: skip
    await retrying(resume, learner)


if __name__ == "__main__":
    limit_malloc_arenas()
    asyncio.run(main(LearnerSettings()))
    # Stopped cleanly: Kafka clients and Redis are closed. The interpreter's own teardown of torch and the
    # model takes seconds on a busy machine and would eat into a supervisor's stop deadline: skip it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
