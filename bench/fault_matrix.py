"""The fault matrix: real processes (service under uvicorn, `python -m learner`, librdkafka's mock
Kafka cluster, redis-server) and real faults (SIGSTOP/SIGKILL, restarts, bad blobs, a dead LLM). Each
feedback case reports events accepted (202), reached Kafka (distinct, and duplicates on the topic),
applied by the learner (its audit log) and applied twice. Writes the `fault-matrix` section of
RELIABILITY.md.

    python bench/fault_matrix.py --model runs/llm4rec [--cases kafka,service,learner,redis,embedded-kill,...]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from markdown_sections import command_line, write_section
from redis.asyncio import Redis
from redis.exceptions import RedisError

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache/text-embeddings"
sys.path.insert(0, str(ROOT))

from common.adapter import Manifest, encode, sign  # noqa: E402
from common.adapter_store import RedisAdapterStore  # noqa: E402
from common.events import FeedbackEvent  # noqa: E402
from common.settings import AdapterSettings  # noqa: E402
from models.adapter import AdapterView  # noqa: E402
from retrieval.catalog import index_vectors  # noqa: E402
from retrieval.user_models import query_vector, user_vectors  # noqa: E402
from tests.kafka_mock import MockKafka, mock_kafka, read_topic  # noqa: E402
from tests.net import free_port, wait_http  # noqa: E402
from tests.redis_keys import delete_prefixed  # noqa: E402
from training.experiment import OpenedCheckpoint, checkpoint_version, open_checkpoint  # noqa: E402

RANK = AdapterSettings().rank  # the service's, which checks the shapes


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


class Stack:
    """Service + learner processes against one Kafka and one Redis, with their own spool and prefix."""

    def __init__(self, model: Path, kafka: MockKafka, redis_url: str, extra: dict[str, str] | None = None) -> None:
        self.model, self.kafka, self.redis_url = model, kafka, redis_url
        self.prefix = f"fault:{uuid.uuid4().hex[:8]}:"
        self.port, self.metrics_port = free_port(), free_port()
        self.spool = Path(tempfile.mkdtemp(prefix="fault-spool-"))
        self.env = {**os.environ, "RECSYS_MODEL_DIR": str(model), "RECSYS_CACHE_DIR": str(CACHE),
                    "RECSYS_INDEX__LOCATION": str(ROOT / ".cache/index"), "RECSYS_REDIS_URL": redis_url,
                    "RECSYS_HISTORY_PREFIX": self.prefix + "h:", "RECSYS_FEEDBACK__DEDUPE_PREFIX": self.prefix + "e:",
                    "RECSYS_ITEMS_STREAM": self.prefix + "items", "RECSYS_MODEL_KEY": self.prefix + "model",
                    "RECSYS_FEEDBACK__SPOOL_DIR": str(self.spool),
                    "RECSYS_STATE_DIR": str(self.spool) + "-state", "RECSYS_FEEDBACK__ACK_WAIT_S": "0.2",
                    "RECSYS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap, "RECSYS_KAFKA__GROUP_ID": self.prefix,
                    "RECSYS_ADAPTER__PREFIX": self.prefix + "a:", "RECSYS_ADAPTER__SIGNING_KEY": "fault-key",
                    "RECSYS_LEARNER_METRICS_PORT": str(self.metrics_port), "RECSYS_BATCH__SIZE": "64",
                    "RECSYS_GUARD__HOLDOUT_EVERY": "0", **(extra or {})}  # fmt: skip
        self.service: subprocess.Popen[bytes] | None = None
        self.learner: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted: list[str] = []

    def start_service(self) -> None:
        cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(self.port),
               "--log-level", "warning"]  # fmt: skip
        self.service = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_http(f"{self.url}/healthz", timeout_s=300, ok=300)

    def start_learner(self) -> None:
        log = (self.spool.parent / f"{self.spool.name}-learner.log").open("a")  # kept for post-mortems
        self.learner = subprocess.Popen([sys.executable, "-m", "learner"], cwd=ROOT, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)  # fmt: skip

    def kill(self, which: str) -> None:
        proc = self.service if which == "service" else self.learner
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def post(self, users: int = 5, per_user: int = 2, items: tuple[str, ...] = ()) -> bool:
        """One feedback request (clicks on items 1-50, or on `items`); returns whether the 202 said published."""
        pool = items or tuple(str(1 + i) for i in range(50))
        events = [{"event_id": uuid.uuid4().hex, "user_id": str(1 + (i % users)), "item_id": pool[i % len(pool)],
                   "type": "click"} for i in range(users * per_user)]  # fmt: skip
        r = httpx.post(f"{self.url}/feedback", json={"events": events}, timeout=30)
        r.raise_for_status()
        self.accepted += [e["event_id"] for e in events]
        return bool(r.json()["published"])

    def spool_empty(self) -> bool:
        return "0 spooled" in httpx.get(f"{self.url}/readyz", timeout=5).json()["dependencies"]["events"]

    def audit(self) -> list[str]:
        async def read() -> list[str]:
            redis = Redis.from_url(self.redis_url)
            try:
                return await RedisAdapterStore(redis, self.prefix + "a:").audit_log()
            finally:
                await redis.aclose()

        return asyncio.run(read())

    def manifest(self) -> dict[str, object]:
        """The current adapter version's manifest."""

        async def read() -> dict[str, object]:
            redis = Redis.from_url(self.redis_url)
            try:
                store = RedisAdapterStore(redis, self.prefix + "a:")
                fields = await store.fetch(await store.current())
                return json.loads(fields[b"manifest"]) if fields else {}
            finally:
                await redis.aclose()

        return asyncio.run(read())

    def row(self, name: str, note: str) -> str:
        wait_until(lambda: set(self.audit()) >= set(self.accepted), 240, "the learner to apply every event")
        records = asyncio.run(read_topic(self.kafka.bootstrap, "recsys.feedback", len(self.accepted)))
        on_topic = [FeedbackEvent.model_validate_json(v).event_id for _, v in records]
        mine = set(self.accepted)
        topic = [e for e in on_topic if e in mine]
        audit = [e for e in self.audit() if e in mine]
        lost = len(mine - set(audit))
        return (
            f"| {name} | {len(self.accepted)} | {len(set(topic))} (+{len(topic) - len(set(topic))} dup) | "
            f"{len(set(audit))} | {len(audit) - len(set(audit))} | {lost} | {note} |"
        )

    def stop(self) -> None:
        for p in (self.service, self.learner):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    def forget(self) -> None:
        """Delete this stack's keys from Redis (histories, event ids, adapters), which outlive the run
        on a shared server; a Redis that is down by now (a killed-Redis case) has nothing to clean."""

        async def delete() -> None:
            redis = Redis.from_url(self.redis_url)
            try:
                await delete_prefixed(redis, self.prefix)
            except (OSError, RedisError):
                pass
            finally:
                await redis.aclose()

        asyncio.run(delete())


@contextmanager
def stack(model: Path, redis_url: str = "redis://127.0.0.1:6379/0", extra: dict[str, str] | None = None,
          learner: bool = True) -> Iterator[Stack]:  # fmt: skip
    """A fresh mock Kafka and a Stack on it, service (and learner) started; all torn down after."""
    with mock_kafka() as kafka:
        s = Stack(model, kafka, redis_url, extra)
        try:
            s.start_service()
            if learner:
                s.start_learner()
            yield s
        finally:
            kafka.thaw()
            s.stop()
            s.forget()


def kafka_outage(model: Path) -> str:
    with stack(model) as s:
        kafka = s.kafka
        spooled, frozen_at = 0, None
        for n in range(40):
            if n == 10:
                kafka.freeze()
                frozen_at = time.monotonic()
            if frozen_at is not None and time.monotonic() - frozen_at > 10:
                kafka.thaw()
                frozen_at = None
            spooled += 0 if s.post() else 1
            time.sleep(0.3)
        kafka.thaw()
        wait_until(s.spool_empty, 120, "the spool to drain")
        return s.row("Kafka unreachable 10 s mid-burst (SIGSTOP), then back", f"{spooled} requests answered from "
                     "the spool, replayed in order")  # fmt: skip


def service_killed(model: Path) -> str:
    with stack(model) as s:
        kafka = s.kafka
        for _ in range(5):
            s.post()
        kafka.freeze()
        for _ in range(10):
            s.post()  # durable in the spool only
        s.kill("service")
        kafka.thaw()
        s.start_service()  # the same spool folder: replayed from disk
        wait_until(s.spool_empty, 120, "the replay")
        return s.row("service SIGKILL with events in the spool, restarted", "replayed from the fsynced spool")


def learner_killed(model: Path) -> str:
    """Also: ten items added with POST /items (the Redis stream) get a tenth of the clicks."""
    new = tuple(f"fault-new-{j}" for j in range(10))
    with stack(model, learner=False) as s:
        body = {"items": [{"item_id": i, "title": f"A new film {i}", "categories": ["Drama"]} for i in new]}
        httpx.post(f"{s.url}/items", json=body, timeout=60).raise_for_status()
        for n in range(60):
            s.post(users=10, per_user=5, items=new if n % 10 == 0 else ())
        s.start_learner()
        wait_until(lambda: len(s.audit()) >= 300, 180, "the learner to start applying")
        s.kill("learner")  # mid-stream: batches applied, offsets of the last maybe not committed
        at_kill = len(s.audit())
        s.start_learner()
        row = s.row("learner SIGKILL mid-stream, restarted", f"{at_kill} of {len(s.accepted)} applied at the "
                    "kill; resumed from committed offsets")  # fmt: skip
        known = len(set(new) & set(s.manifest().get("items", [])))
        return row[:-2] + f"; {known} of 10 items added after training have rows in the last version |"


def redis_restart(model: Path) -> str:
    port = free_port()
    folder = tempfile.mkdtemp(prefix="fault-redis-")
    cmd = ["redis-server", "--port", str(port), "--appendonly", "yes", "--save", "", "--dir", folder]

    def start_redis() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).returncode == 0,
                   30, "redis")  # fmt: skip
        return p

    redis = start_redis()
    try:
        with stack(model, f"redis://127.0.0.1:{port}/0") as s:
            failures = 0
            for n in range(30):
                if n == 10:
                    redis.send_signal(signal.SIGKILL)  # while serving and while the learner publishes
                    redis.wait()
                if n == 20:
                    redis = start_redis()  # the append-only file brings back histories and applied ids
                s.post()
                r = httpx.post(f"{s.url}/recommend", json={"user_id": "3", "k": 10}, timeout=30)
                failures += r.status_code != 200
                time.sleep(0.2)
            return s.row("Redis killed while serving and publishing, restarted (AOF)",
                         f"{failures} of 30 /recommend failed meanwhile")  # fmt: skip
    finally:
        redis.kill()


def embedded_restart(model: Path, sig: signal.Signals) -> str:
    """`llm4rec serve` on the embedded defaults (no Kafka, no Redis): a burst of clicks, stopped by `sig`
    before the in-process learner has taken them, then restarted on the same folders. Applied: the event
    ids recorded in its SQLite state; applied twice: the last version's count of events learnt beyond
    the distinct ids applied."""
    work = Path(tempfile.mkdtemp(prefix="fault-embedded-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")} | {
        "RECSYS_MODEL_DIR": str(model), "RECSYS_CACHE_DIR": str(CACHE),
        "RECSYS_INDEX__LOCATION": str(ROOT / ".cache/index"), "RECSYS_STATE_DIR": str(work / "state"),
        "RECSYS_FEEDBACK__SPOOL_DIR": str(work / "spool"),
        "RECSYS_ADDED_ITEMS_LOG": str(work / "items.jsonl"), "RECSYS_GUARD__HOLDOUT_EVERY": "0"}  # fmt: skip
    accepted: list[str] = []

    def start() -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "llm4rec", "serve", "--port", str(port), "--no-train-if-missing"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"{url}/readyz", timeout_s=300, ok=300)
        return proc

    def post(n: int) -> None:
        events = [{"event_id": uuid.uuid4().hex, "user_id": str(1 + i % 5), "item_id": str(1 + i % 50),
                   "type": "click"} for i in range(n)]  # fmt: skip
        httpx.post(f"{url}/feedback", json={"events": events}, timeout=30).raise_for_status()
        accepted.extend(e["event_id"] for e in events)

    def state() -> tuple[set[str], int]:
        db = sqlite3.connect(work / "state" / "embedded.sqlite")
        try:
            applied = {row[0] for row in db.execute("SELECT id FROM applied_events")}
            raw = db.execute("SELECT value FROM adapter_fields WHERE name = 'manifest' ORDER BY version DESC LIMIT 1")
            row = raw.fetchone()
            return applied, json.loads(row[0])["events_seen"] if row else 0
        finally:
            db.close()

    proc = start()
    try:
        for _ in range(15):
            post(10)
        proc.send_signal(sig)
        proc.wait(30)
        at_stop = len(state()[0] & set(accepted))
        proc = start()
        for _ in range(5):
            post(10)
        wait_until(lambda: state()[0] >= set(accepted), 240, "the restarted learner to apply every event")
        applied, seen = state()
    finally:
        proc.kill()
        proc.wait()
    mine = set(accepted)
    return (
        f"| embedded `llm4rec serve` {sig.name} mid-stream, restarted | {len(mine)} | - (in process) | "
        f"{len(applied & mine)} | {seen - len(applied & mine)} | {len(mine - applied)} | {at_stop} of 150 "
        "applied at the stop; the rest learnt after the restart from the spool and the learner's inbox |"
    )


def adapter_fields(version: int, tensors: dict[str, np.ndarray], key: bytes, model_id: str) -> dict[str, bytes]:
    return encode(tensors, Manifest(version, model_id, {k: list(v.shape) for k, v in tensors.items()}, 1), key)


def publish_adapter(s: Stack, version: int, fields: dict[str, bytes]) -> None:
    async def publish() -> None:
        redis = Redis.from_url("redis://127.0.0.1:6379/0")
        await RedisAdapterStore(redis, s.prefix + "a:").publish(version, fields, [])
        await redis.aclose()

    asyncio.run(publish())


def bad_adapters(model: Path) -> str:
    rows = []
    with stack(model, learner=False) as s:
        ck = open_checkpoint(model, CACHE)
        dim, n = ck.model.config.fusion.dim, int(ck.model.log_pop.shape[0])
        good = AdapterView.identity(dim, ck.model.log_pop.numpy(), RANK).tensors()
        good["item_bias"][:] = 0.01
        base = checkpoint_version(model)

        def fields(version: int, tensors: dict[str, np.ndarray], key: bytes, model_id: str = base) -> dict[str, bytes]:
            return adapter_fields(version, tensors, key, model_id)

        def publish(version: int, f: dict[str, bytes]) -> None:
            publish_adapter(s, version, f)

        def served() -> int:
            return int(
                httpx.post(f"{s.url}/recommend", json={"user_id": "3", "k": 5}, timeout=10).json()["adapter_version"]
            )

        publish(1, fields(1, good, b"fault-key"))
        wait_until(lambda: served() == 1, 30, "the good adapter")
        corrupt = fields(3, good, b"fault-key") | {"weights": b"\x00corrupt"}
        corrupt["signature"] = sign(b"fault-key", corrupt["manifest"], b"\x00corrupt").encode()
        cases = [("wrong signature", 2, fields(2, good, b"another key")),
                 ("corrupt blob (signed)", 3, corrupt),
                 ("wrong shapes", 4, fields(4, good | {"item_bias": np.zeros(n + 1, np.float32)}, b"fault-key")),
                 ("another base model", 5, fields(5, good, b"fault-key", "0123456789ab")),
                 ("oversized blob", 6, fields(6, good, b"fault-key") | {"weights": b"x" * (65 << 20)})]  # fmt: skip
        for name, version, f in cases:
            publish(version, f)
            time.sleep(1.5)  # past the service's poll
            rows.append(f"| {name} | refused, version {served()} still served |")
        publish(1, fields(1, good, b"fault-key"))  # an older version: never moves backwards
        publish(7, fields(7, good, b"fault-key"))
        wait_until(lambda: served() == 7, 30, "the next good adapter")
        rows.append("| next good version 7 | swapped in |")
        text = httpx.get(f"{s.url}/metrics", timeout=10).text
        counts = [line for line in text.splitlines() if line.startswith("recsys_adapter_rejections_total{")]
        return ("| adapter published | outcome |\n|---|---|\n" + "\n".join(rows) +
                "\n\nService counters: " + ", ".join(f"`{c}`" for c in counts) + "\n")  # fmt: skip


def _expected_scores(ck: OpenedCheckpoint, history: list[str], versions: dict[int, dict[str, np.ndarray]],
                     gamma: float) -> dict[int, dict[str, float]]:  # fmt: skip
    """Per version, every item's score for a user with `history` when the index holds that version's
    rows: the service's own functions (index rows, user encoding, query vector) in this process."""
    base, index = index_vectors(ck.model), {x: i for i, x in enumerate(ck.data.item_ids)}
    u = user_vectors(ck.model, [[index[i] for i in history]])[0].numpy()
    out = {}
    for v, tensors in versions.items():
        view = AdapterView(v, tensors)
        rows = view.item_rows(base, index)
        scores = rows @ query_vector(view.user(u), gamma)
        out[v] = dict(zip(ck.data.item_ids, scores.tolist(), strict=True))
    return out


def mixed_versions(model: Path, k: int = 100, gamma: float = 1.0) -> str:
    """Versions that move every item row, published back to back while one user's recommendations are
    requested without pause; each answer's items are then matched, by score, to the version whose row
    produced it. Safe (service/adapters.py): rows of the version served and of the one being written."""
    rng = np.random.default_rng(0)
    with stack(model, learner=False, extra={"RECSYS_RAG__ENABLED": "false"}) as s:  # item rows only
        ck = open_checkpoint(model, CACHE)
        dim, n = ck.model.config.fusion.dim, int(ck.model.log_pop.shape[0])
        scale = float(np.linalg.norm(index_vectors(ck.model)[:, :-1], axis=1).mean())
        versions = {}
        for v in (1, 2, 3):  # every row moves at every version (as the first version after a start does)
            t = AdapterView.identity(dim, ck.model.log_pop.numpy(), RANK).tensors()
            t["item_delta"] = (rng.normal(size=(n, dim)) * 0.3 * scale / np.sqrt(dim)).astype(np.float32)
            t["log_pop"] = (t["log_pop"] + rng.uniform(0, 1, n)).astype(np.float32)
            versions[v] = t
        user, history = f"mix-{uuid.uuid4().hex[:6]}", list(ck.data.item_ids[:5])
        events = [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": i, "type": "click"} for i in history]
        httpx.post(f"{s.url}/feedback", json={"events": events}, timeout=30).raise_for_status()
        query = {"user_id": user, "k": k, "explain": False, "debias": {"gamma": gamma}}
        answers: list[tuple[int, list[tuple[str, float]]]] = []

        def ask() -> int:
            r = httpx.post(f"{s.url}/recommend", json=query, timeout=30)
            r.raise_for_status()
            body = r.json()
            answers.append((int(body["adapter_version"]), [(x["item_id"], x["score"]) for x in body["items"]]))
            return answers[-1][0]

        def publish(v: int) -> None:
            publish_adapter(s, v, adapter_fields(v, versions[v], b"fault-key", checkpoint_version(model)))

        publish(1)
        wait_until(lambda: ask() == 1, 60, "version 1")
        answers.clear()
        published = time.monotonic()
        publish(2)
        while ask() < 2:  # while version 2 is being written
            pass
        publish(3)
        while ask() < 3:
            pass
        for _ in range(20):  # and after
            ask()
        window_s = time.monotonic() - published
    expected = _expected_scores(ck, history, versions, gamma)
    return _mixture_table(answers, expected, window_s)


def _mixture_table(answers: list[tuple[int, list[tuple[str, float]]]], expected: dict[int, dict[str, float]],
                   window_s: float) -> str:  # fmt: skip
    """Classifies each answer by the versions its items' rows came from."""
    served_order = sorted({v for v, _ in answers})
    following = dict(itertools.pairwise(served_order))
    counts = {"one version (the one served)": 0, "the version served and the one being written (safe)": 0,
              "an older version's row, or none matching (unsafe)": 0}  # fmt: skip
    for served, items in answers:
        # per item, the versions whose row gives its score (float32 sums, rounded to 6 decimals)
        rows = [{v for v, e in expected.items() if abs(e[item] - score) <= 1e-4 + 1e-5 * abs(score)}
                for item, score in items]  # fmt: skip
        if all(served in r for r in rows):
            counts["one version (the one served)"] += 1
        elif all(r & {served, following.get(served)} for r in rows):
            counts["the version served and the one being written (safe)"] += 1
        else:
            counts["an older version's row, or none matching (unsafe)"] += 1
    return (f"{len(answers)} answers (top {len(answers[0][1])}, one user, one after another) over {window_s:.1f} s "
            "while versions 2 and 3, each moving every item row, were published back to back after version 1; "
            "each item's score matched to the versions whose row gives it (within 1e-4 + 1e-5 x the score).\n\n"
            "| rows an answer's items were scored with | answers |\n|---|---|\n"
            + "\n".join(f"| {k} | {v} |" for k, v in counts.items()) + "\n")  # fmt: skip


def llm_faults(model: Path) -> str:
    out = []
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers: a hung LLM server
    for name, url in (("down (connection refused)", f"http://127.0.0.1:{free_port()}/v1"),
                      ("hung (accepts, never answers)", f"http://127.0.0.1:{silent.getsockname()[1]}/v1")):  # fmt: skip
        with stack(
            model,
            extra={
                "RECSYS_EXPLAIN__BACKEND": "openai",
                "RECSYS_EXPLAIN__BASE_URL": url,
                "RECSYS_EXPLAIN__TIMEOUT_S": "0.5",
            },
            learner=False,
        ) as s:
            times, codes = [], []
            for u in range(1, 11):
                t = time.perf_counter()
                r = httpx.post(f"{s.url}/recommend", json={"user_id": str(u), "k": 10}, timeout=30)
                times.append(1000 * (time.perf_counter() - t))
                codes.append(r.status_code)
            text = httpx.get(f"{s.url}/metrics", timeout=10).text
            fb = sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("recsys_explainer_fallbacks_total{"))  # fmt: skip
            out.append(f"| LLM {name} | {codes.count(200)} of 10 answered 200 | max {max(times):.0f} ms "
                       f"(timeout 500 ms) | {int(fb)} of 100 explanations from templates |")  # fmt: skip
    silent.close()
    return "| case | answers | latency | fallbacks |\n|---|---|---|---|\n" + "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/llm4rec")
    p.add_argument("--cases", default="kafka,service,learner,redis,embedded-kill,embedded-term,adapters,llm,mixed")
    args = p.parse_args()
    wanted = args.cases.split(",")
    cases = {"kafka": kafka_outage, "service": service_killed, "learner": learner_killed, "redis": redis_restart,
             "embedded-kill": functools.partial(embedded_restart, sig=signal.SIGKILL),
             "embedded-term": functools.partial(embedded_restart, sig=signal.SIGTERM)}  # fmt: skip
    if "mixed" in wanted:  # its own section: it can be re-run alone
        body = (f"## Requests during index writes\n\nCommand: `{command_line()}`. The service (uvicorn) with Redis, "
                f"the `{args.model.name}` model.\n\n" + mixed_versions(args.model))  # fmt: skip
        print(body)
        write_section("fault-matrix-mixed-versions", body, ROOT / "RELIABILITY.md")
    if not set(wanted) - {"mixed"}:
        return
    feedback = []
    for key, fn in cases.items():
        if key in wanted:
            feedback.append(fn(args.model))
            print(feedback[-1], flush=True)

    body = (f"## Fault matrix\n\nCommand: `{command_line()}`. Real processes on "
            "loopback: the service (uvicorn), `python -m learner`, librdkafka's mock Kafka cluster (a child process, "
            "frozen with SIGSTOP for an outage), redis-server, and `llm4rec serve` on the embedded defaults; "
            "ml-latest-small model, the learner's default settings (the user-side adapter, the item rows and the "
            "streaming popularity learning).\n\n"
            "| case | accepted (202) | reached Kafka | applied | applied twice | lost | notes |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(feedback) + "\n")  # fmt: skip
    if "adapters" in wanted:
        body += "\n### Bad adapters in Redis (signing key configured)\n\n" + bad_adapters(args.model)
    if "llm" in wanted:
        body += "\n### The LLM backend down or hung\n\n" + llm_faults(args.model)
    print(body)
    write_section("fault-matrix", body, ROOT / "RELIABILITY.md")


if __name__ == "__main__":
    main()
