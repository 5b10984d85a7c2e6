"""The `llm4rec` commands end to end, through typer's runner (same code path as the console script)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm4rec.cli import app
from recdata.tables import DatasetSpec, Tables
from tests.conftest import SmallTrained
from tests.llm4rec.test_supervisor import descendants, exits_within
from tests.net import free_port, wait_http
from tests.recdata.test_movielens import write_ml1m
from tests.redis_keys import delete_prefixed

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["data"], ["data", "convert"], ["data", "info"], ["eval"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_data_convert_and_info(tmp_path: Path) -> None:
    write_ml1m(tmp_path / "ml-1m")
    result = runner.invoke(
        app, ["data", "convert", "--format", "ml-1m", str(tmp_path / "ml-1m"), str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "2 users, 2 items, 3 interactions" in result.output
    assert (tmp_path / "out" / "dataset.toml").is_file()
    info = runner.invoke(app, ["data", "info", str(tmp_path / "out")])
    assert "sensitive: ['gender', 'age_group']" in info.output


def test_bad_dataset_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["data", "info", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "unknown format" in result.output
    result = runner.invoke(app, ["eval", "--models", "mostpop,nope"])
    assert result.exit_code == 2
    assert "unknown models ['nope']" in result.output


def _small_generic(dst: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [["user_id", "item_id", "timestamp"]]
    for u in range(40):
        for t, i in enumerate(rng.choice(30, size=8, replace=False)):
            rows.append([f"u{u}", f"i{i}", str(1000 * t + u)])
    items = [["item_id", "title", "genres"], *([f"i{i}", f"item {i}", "a|b" if i % 2 else "c"] for i in range(30))]
    Tables(DatasetSpec("small", ("title",), {"genres": "|"}), rows, items).write(dst)


def test_eval_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    _small_generic(tmp_path / "data")
    out = tmp_path / "results"
    args = ["eval", "--dataset", str(tmp_path / "data"), "--models", "mostpop,itemknn,sasrec", "--max-epochs", "2"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"mostpop", "itemknn", "sasrec"}
    assert report["meta"]["users_evaluated"] == 40
    assert 0.0 <= report["results"]["sasrec"]["NDCG@10"] <= 1.0
    assert "| mostpop |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def _long_text_generic(dst: Path) -> list[str]:
    """Items with descriptions of several hundred words and no genres or other features."""
    rng = np.random.default_rng(1)
    vocab = [f"w{k}" for k in range(400)]
    rows = [["user_id", "item_id", "timestamp"]]
    for u in range(30):
        for t, i in enumerate(rng.choice(25, size=7, replace=False)):
            rows.append([f"u{u}", f"i{i}", str(1000 * t + u)])
    descriptions = [" ".join(rng.choice(vocab, size=int(rng.integers(300, 700)))) for _ in range(25)]
    items = [["item_id", "description"], *([f"i{i}", d] for i, d in enumerate(descriptions))]
    Tables(DatasetSpec("long-text", ("description",)), rows, items).write(dst)
    return descriptions


def test_eval_trains_llm4rec_on_long_descriptions_without_genres(tmp_path: Path) -> None:
    descriptions = _long_text_generic(tmp_path / "data")
    assert min(len(d.split()) for d in descriptions) >= 300
    out = tmp_path / "results"
    result = runner.invoke(app, ["eval", "--dataset", str(tmp_path / "data"), "--models", "llm4rec,sasrec",
                                 "--max-epochs", "2", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["users_evaluated"] == 30
    for model in ("llm4rec", "sasrec"):
        assert 0.0 <= report["results"][model]["NDCG@10"] <= 1.0


def test_eval_sampled_protocol_and_temporal_split(tmp_path: Path) -> None:
    _small_generic(tmp_path / "data")
    for extra in (["--protocol", "sampled-pop"], ["--split", "temporal"]):
        result = runner.invoke(app, ["eval", "--dataset", str(tmp_path / "data"), "--models", "mostpop", *extra,
                                     "--out", str(tmp_path / "r")])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "HR@10" in json.loads((tmp_path / "r" / "results.json").read_text())["results"]["mostpop"]


def test_index_build_of_the_context_alone_after_the_items(checkpoint: Path, small_trained: SmallTrained,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """What `llm4rec serve`'s background build runs: the items first, the RAG context in a later step."""
    common = ["index", "build", "--model", str(checkpoint), "--location", str(tmp_path / "index"),
              "--cache-dir", str(small_trained.cache)]  # fmt: skip
    items = runner.invoke(app, [*common, "--no-context"])
    assert items.exit_code == 0, items.output
    context = runner.invoke(app, [*common, "--no-items"])
    assert context.exit_code == 0, context.output
    assert "context:" in context.output
    assert "items:" not in context.output


def test_adapter_rollback_republishes_an_old_version_signed_and_newer(monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import numpy as np
    from redis.asyncio import Redis

    from common.adapter import Manifest, decode, encode
    from common.adapter_store import RedisAdapterStore

    prefix = f"test:cli:{uuid.uuid4().hex}:"
    monkeypatch.setenv("RECSYS_ADAPTER__PREFIX", prefix)
    monkeypatch.setenv("RECSYS_ADAPTER__SIGNING_KEY", "k")
    monkeypatch.setenv("RECSYS_REDIS_URL", "redis://127.0.0.1:6379/0")
    shapes = {"A": (2, 3), "B": (3, 2), "item_bias": (4,)}

    async def setup() -> None:
        redis = Redis.from_url("redis://127.0.0.1:6379/0")
        store = RedisAdapterStore(redis, prefix)
        for v in (1, 2):
            t = {k: np.full(s, v / 10, np.float32) for k, s in shapes.items()}
            await store.publish(v, encode(t, Manifest(v, "base", {k: list(s) for k, s in shapes.items()}, v), b"k"), [])
        await redis.aclose()

    async def served() -> tuple[int, float]:
        redis = Redis.from_url("redis://127.0.0.1:6379/0")
        store = RedisAdapterStore(redis, prefix)
        v = await store.current()
        fields = await store.fetch(v)
        assert fields is not None
        _, tensors = decode(fields, b"k", shapes, 0)
        await delete_prefixed(redis, prefix)
        await redis.aclose()
        return v, float(tensors["item_bias"][0])

    asyncio.run(setup())
    listed = runner.invoke(app, ["adapter", "list"])
    assert listed.exit_code == 0
    assert listed.stdout.split() == ["1", "2", "(served)"]
    r = runner.invoke(app, ["adapter", "rollback", "1"])
    assert r.exit_code == 0, r.output
    assert "re-published as 3" in r.stdout
    missing = runner.invoke(app, ["adapter", "rollback", "9"])
    assert missing.exit_code == 2
    version, bias = asyncio.run(served())
    assert version == 3
    assert bias == pytest.approx(0.1)


def test_up_runs_service_and_learner_processes_against_kafka_and_redis(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> None:
    import uuid

    import httpx

    from tests.kafka_mock import mock_kafka

    port, metrics_port, prefix = free_port(), free_port(), f"test:up:{uuid.uuid4().hex}:"
    with mock_kafka() as kafka:
        env = {**os.environ, "RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
               "RECSYS_REDIS_URL": "redis://127.0.0.1:6379/0", "RECSYS_HISTORY_PREFIX": prefix + "h:",
               "RECSYS_ADAPTER__PREFIX": prefix + "a:", "RECSYS_FEEDBACK__DEDUPE_PREFIX": prefix + "e:",
               "RECSYS_ITEMS_STREAM": prefix + "items", "RECSYS_MODEL_KEY": prefix + "model",
               "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"),
               "RECSYS_STATE_DIR": str(tmp_path / "state"), "RECSYS_INDEX__LOCATION": str(tmp_path / "ix"),
               "RECSYS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RECSYS_KAFKA__GROUP_ID": prefix,
               "RECSYS_LEARNER_METRICS_PORT": str(metrics_port), "RECSYS_GUARD__HOLDOUT_EVERY": "0"}  # fmt: skip
        up = subprocess.Popen([sys.executable, "-m", "llm4rec", "up", "--port", str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            version = 0
            while time.monotonic() < deadline and version == 0:
                time.sleep(0.5)
                try:
                    httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).raise_for_status()
                    events = [{"user_id": "u1", "item_id": f"m{i}", "type": "like"} for i in range(20, 30)]
                    httpx.post(f"{base}/feedback", json={"events": events}, timeout=5).raise_for_status()
                    r = httpx.post(f"{base}/recommend", json={"user_id": "u1", "k": 3}, timeout=5)
                    version = r.json()["adapter_version"]
                except httpx.HTTPError:
                    continue
            assert version > 0  # feedback went service -> Kafka -> learner process -> Redis -> service
            assert len(descendants(up.pid)) >= 2  # the service and the learner
        finally:
            _stop_up(up, signal.SIGINT)  # the learner and the service get SIGTERM from `up`
            _delete_keys(prefix)


@pytest.mark.parametrize(
    ("sig", "ignore_sigint"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint", "sigint-ignored-at-start"],
)
def test_up_stops_within_10_s_of_a_signal_leaving_no_process_and_the_spool_intact(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path, sig: signal.Signals, ignore_sigint: bool
) -> None:
    """The embedded default (one service process). A shell's background job starts with SIGINT
    ignored, which `up` and its children would inherit: `up` must take SIGINT all the same."""
    import httpx

    from service.spool import Position, Spool

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
            "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"),
            "RECSYS_STATE_DIR": str(tmp_path / "state"), "RECSYS_INDEX__LOCATION": str(tmp_path / "ix"),
            "RECSYS_GUARD__HOLDOUT_EVERY": "0"}  # fmt: skip
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    up = subprocess.Popen([sys.executable, "-m", "llm4rec", "up", "--port", str(port)], env=env, preexec_fn=ignore)
    events = [{"user_id": "u1", "item_id": f"m{i}", "type": "like"} for i in range(20, 25)]
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=120)
        r = httpx.post(f"http://127.0.0.1:{port}/feedback", json={"events": events}, timeout=10)
        assert r.status_code == 202, r.text
    finally:
        _stop_up(up, sig)
    assert len(Spool(tmp_path / "spool").read(Position(0, 0), 100)) == len(events)  # acknowledged: kept


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint", "sigint-ignored-at-start"])
def test_serve_stops_on_sigint_also_when_started_in_the_background(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path, ignore_sigint: bool
) -> None:
    """`llm4rec serve` alone, as the README starts it: Ctrl-C (or a shell's background job, which starts
    with SIGINT ignored, sent SIGINT) stops it cleanly within 10 s."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
            "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"), "RECSYS_STATE_DIR": str(tmp_path / "state"),
            "RECSYS_INDEX__LOCATION": str(tmp_path / "ix")}  # fmt: skip
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    serve = subprocess.Popen([sys.executable, "-m", "llm4rec", "serve", "--port", str(port)], env=env,
                             preexec_fn=ignore)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=120)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            code = serve.wait(10)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
            raise
    assert code == 0


def _delete_keys(prefix: str) -> None:
    """Remove what a test's processes wrote to the shared Redis under `prefix`."""
    from redis.asyncio import Redis

    async def run() -> None:
        redis = Redis.from_url("redis://127.0.0.1:6379/0")
        await delete_prefixed(redis, prefix)
        await redis.aclose()

    asyncio.run(run())


def _stop_up(up: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send `sig` to `up`; it must exit 0 within 10 s with none of its processes left running (any
    that are get SIGKILL here, so a failing test leaves nothing behind)."""
    children = descendants(up.pid)
    start = time.monotonic()
    up.send_signal(sig)
    code: int | None = None
    with contextlib.suppress(subprocess.TimeoutExpired):
        code = up.wait(10)
    took = time.monotonic() - start
    left = sorted(p for p in children if not exits_within(p, 2.0))  # a grandchild dies when next scheduled
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if code is None:
        up.kill()
        up.wait()
    assert code == 0, f"`up` exited with {code} {took:.1f} s after {sig.name}"
    assert not left, f"processes {left} outlived `up` ({took:.1f} s after {sig.name})"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_embedded_restart_forgets_nothing_users_did(
    checkpoint: Path, small_trained: SmallTrained, tmp_path: Path, sig: signal.Signals
) -> None:
    """The embedded default: likes and dislikes, the event-id memory and the served adapter version
    survive a restart of `llm4rec serve`, whether it was stopped or killed."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
            "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"), "RECSYS_STATE_DIR": str(tmp_path / "state"),
            "RECSYS_INDEX__LOCATION": str(tmp_path / "ix"), "RECSYS_GUARD__HOLDOUT_EVERY": "0",
            "RECSYS_BATCH__IN_PROCESS_WAIT_MS": "100"}  # fmt: skip

    def serve() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "llm4rec", "serve", "--port", str(port)], env=env)
        wait_http(f"{base}/readyz", timeout_s=120, ok=300)
        return proc

    def listed(client: httpx.Client) -> tuple[set[str], int]:
        body = client.post(f"{base}/recommend", json={"user_id": "u5", "k": 10, "explain": False}).json()
        return {it["item_id"] for it in body["items"]}, int(body["adapter_version"])

    proc = serve()
    try:
        with httpx.Client(timeout=10) as client:
            first, _ = listed(client)
            liked, disliked = sorted(first)[:5], sorted(first)[5:7]
            events = [{"event_id": f"like-{i}", "user_id": "u5", "item_id": i, "type": "like"} for i in liked]
            events += [{"event_id": f"no-{i}", "user_id": "u5", "item_id": i, "type": "dislike"} for i in disliked]
            assert client.post(f"{base}/feedback", json={"events": events}).json()["accepted"] == 7
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the in-process learner publishes its first adapter
                items, version = listed(client)
                if version:
                    break
                time.sleep(0.2)
            assert version >= 1
            assert not items & set(liked + disliked)
        proc.send_signal(sig)
        proc.wait(10)
        proc = serve()
        with httpx.Client(timeout=10) as client:
            items, after = listed(client)
            assert not items & set(liked + disliked)  # the history and the rejections came back
            assert after >= version  # the served adapter did not go back
            again = client.post(f"{base}/feedback", json={"events": events[:1]}).json()
            assert again == {"accepted": 0, "duplicates": 1, "published": True}
    finally:
        proc.kill()
        proc.wait()
