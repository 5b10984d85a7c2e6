"""The embedded default's periodic fine-tune: run, indexed and swapped in by the service itself (the
learner re-based on the new model, the old item collection deleted); a failed one keeps the model and
the events; one killed with its service leaves no child behind and loses no feedback."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.adapter_store import MemoryAdapterStore
from common.events import FeedbackEvent
from learner import fine_tune
from learner.fine_tune import BuildFailedError, PeriodicFineTune
from learner.settings import FineTuneSettings
from llm4rec.embedded import EmbeddedLearner, learn_in_process
from retrieval.catalog import items_collection
from service.settings import Settings
from service.state import app_state
from tests.conftest import SmallTrained, serve, until, with_
from tests.learner.test_end_to_end import _learner_settings, _likes
from tests.net import free_port, wait_http
from training.checkpoint import checkpoint_version, read_checkpoint_meta

pytestmark = pytest.mark.anyio


def _likes_of(user: str, n: int) -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=uuid.uuid4().hex, user_id=user, item_id=f"m{k}", type="click")  # type: ignore[arg-type]
            for k in range(n)]  # fmt: skip


async def test_the_service_fine_tunes_indexes_and_swaps_in_a_model_after_enough_feedback(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, prefix: str, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    old = checkpoint_version(model)
    ls = _learner_settings(model, small_trained, prefix, fine_tune=FineTuneSettings(every_events=12, min_interval_s=0))
    store = MemoryAdapterStore()
    async with serve(with_(settings, model_dir=model, redis_url=None, adapter=ls.adapter), store) as (client, app):
        state = app_state(app)
        embedded = await learn_in_process(state, ls, store, tmp_path / "build.log")
        likes = _likes("u1", range(20, 32))
        r = await client.post("/feedback", json={"events": [*likes, {**likes[0], "type": "dislike",
                                                                       "event_id": "not-a-positive"}]})  # fmt: skip
        assert r.status_code == 202
        await until(lambda: state.recommender.c.model_version != old, timeout_s=180)

        new = state.recommender.c.model_version
        assert checkpoint_version(model) == new
        assert read_checkpoint_meta(model)["fine_tune"] == {"from": old, "events": 12, "epochs": 1, "seed": 0}
        await until(lambda: embedded.learner is not None and embedded.learner.base_model == new, timeout_s=30)
        r = await client.post("/recommend", json={"user_id": "u1", "k": 5, "explain": False})
        assert r.status_code == 200
        assert r.json()["model_version"] == new
        index = Path(settings.index.location)
        await until(lambda: not (index / items_collection(old)).exists(), timeout_s=10)  # the old one is deleted
        assert (index / items_collection(new)).is_dir()
        assert not model.with_name("model.partial").exists()
        assert not model.with_name("model.previous").exists()
        exposed = (await client.get("/metrics")).text
        assert re.search(r'^recsys_learner_fine_tunes_total\{outcome="landed"\} 1\.0', exposed, re.MULTILINE)
        assert re.search(r"^recsys_learner_fine_tune_pending_events 0\.0", exposed, re.MULTILINE)


async def test_a_failed_fine_tune_keeps_the_model_and_the_events(
    settings: Settings, checkpoint: Path, small_trained: SmallTrained, prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    async def fails(*args: object, **kwargs: object) -> None:
        raise BuildFailedError("fine-tuning exited with 1")

    monkeypatch.setattr(fine_tune, "run_child", fails)
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    old = checkpoint_version(model)
    ls = _learner_settings(model, small_trained, prefix)
    store = MemoryAdapterStore()
    async with serve(with_(settings, model_dir=model, redis_url=None, adapter=ls.adapter), store) as (_, app):
        state = app_state(app)
        embedded = EmbeddedLearner(state, ls, store)
        await embedded.attach()
        landed = []

        async def land(old: str, new: str) -> None:
            landed.append(new)

        tuner = PeriodicFineTune(state.settings, FineTuneSettings(every_events=5), tmp_path / "log", land,
                                 embedded.metrics)  # fmt: skip
        await tuner.record(_likes_of("u1", 5))
        assert tuner.due.is_set()
        assert not await tuner.fine_tune()
        assert tuner.pending.count == 5
        assert state.recommender.c.model_version == old == checkpoint_version(model)
        assert landed == []


def _processes_reading(path: Path) -> list[int]:
    """Pids whose command line names `path`."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if str(path).encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
    return out


def test_a_fine_tune_killed_with_its_service_loses_no_feedback_and_leaves_no_child(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    """`llm4rec serve` killed by SIGKILL while its child fine-tunes: the child dies with it, and the next
    start fine-tunes on the same events and swaps the result in."""
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    old, port = checkpoint_version(model), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_MODEL_DIR": str(model), "RECSYS_CACHE_DIR": str(small_trained.cache),
            "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"), "RECSYS_STATE_DIR": str(tmp_path / "state"),
            "RECSYS_INDEX__LOCATION": str(tmp_path / "ix"), "RECSYS_FINE_TUNE__EVERY_EVENTS": "10",
            "RECSYS_FINE_TUNE__MIN_INTERVAL_S": "0", "RECSYS_RAG__ENABLED": "false"}  # fmt: skip

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "llm4rec", "serve", "--port", str(port)], env=env)
        wait_http(f"{base}/readyz", timeout_s=120, ok=300)
        return proc

    def readyz() -> dict[str, Any]:
        return dict(httpx.get(f"{base}/readyz", timeout=10).json())

    proc = serve()
    try:
        events = _likes("u3", range(10, 20))
        assert httpx.post(f"{base}/feedback", json={"events": events}, timeout=10).json()["accepted"] == 10
        deadline = time.monotonic() + 60
        while not (readyz()["building"] or "").startswith("fine-tuning") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (readyz()["building"] or "").startswith("fine-tuning")
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 1.5  # an orphan would take longer than this to finish even a small fine-tune
        while _processes_reading(model) and time.monotonic() < deadline:  # the fine-tune names the model folder
            time.sleep(0.1)
        assert not _processes_reading(model), "the fine-tune outlived its service"
        assert checkpoint_version(model) == old

        proc = serve()
        deadline = time.monotonic() + 120
        while readyz()["model_version"] == old and time.monotonic() < deadline:
            time.sleep(0.2)
        assert readyz()["model_version"] == checkpoint_version(model) != old
        assert read_checkpoint_meta(model)["fine_tune"]["events"] == 10  # the same ten events, none lost
    finally:
        proc.kill()
        proc.wait()
