"""A real Prometheus (Debian's package, installed here if missing) scrapes a running service and
learner; every PromQL expression in the dashboard and the rules is evaluated. The dashboard's queries
must return data after some traffic, the rules must load and evaluate, and no expression may name a
metric the code does not export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from learner.metrics import LearnerMetrics
from service.metrics import Metrics
from tests.conftest import REDIS_URL, SmallTrained
from tests.kafka_mock import mock_kafka
from tests.net import free_port, wait_http
from tests.redis_keys import delete_prefixed

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/llm4rec.json").read_text())
RULES = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())
PANEL_EXPRS = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
RULE_EXPRS = [r["expr"] for g in RULES["groups"] for r in g["rules"]]
RECORDED = {r["record"] for g in RULES["groups"] for r in g["rules"] if "record" in r}


def _exported() -> set[str]:
    """Every series name the two processes can export (labelled families included before first use)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for registry in (Metrics().registry, LearnerMetrics().registry):
        for family in registry.collect():
            names.update(family.name + s for s in suffixes[family.type])
    return names


def test_no_expression_names_a_metric_the_code_does_not_export() -> None:
    exported = _exported()
    for expr in PANEL_EXPRS + RULE_EXPRS:
        for name in re.findall(r"\brecsys[_:][a-z0-9_:]+", expr):
            assert name in exported or name in RECORDED, (name, expr)


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    if shutil.which("prometheus") is None and os.geteuid() == 0:  # the test setup installs Debian's package
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True)  # fmt: skip
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("Prometheus is not installed and cannot be installed here (apt-get install prometheus)")
    return path


@pytest.fixture
def stack(
    prometheus_binary: str, checkpoint: Path, small_trained: SmallTrained, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """Service, learner and Prometheus as processes on loopback, Kafka from the mock cluster."""
    prefix = f"test:mon:{uuid.uuid4().hex}:"
    svc_port, learner_port, prom_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with mock_kafka() as kafka:
        env = {**os.environ, "RECSYS_MODEL_DIR": str(checkpoint), "RECSYS_CACHE_DIR": str(small_trained.cache),
               "RECSYS_REDIS_URL": REDIS_URL, "RECSYS_HISTORY_PREFIX": prefix + "history:",
               "RECSYS_FEEDBACK__DEDUPE_PREFIX": prefix + "event:", "RECSYS_ITEMS_STREAM": prefix + "items",
               "RECSYS_FEEDBACK__SPOOL_DIR": str(tmp_path / "spool"),
               "RECSYS_STATE_DIR": str(tmp_path / "state"), "RECSYS_INDEX__LOCATION": str(tmp_path / "index"),
               "RECSYS_MODEL_KEY": prefix + "model",
               "RECSYS_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
               "RECSYS_KAFKA__GROUP_ID": prefix, "RECSYS_ADAPTER__PREFIX": prefix + "adapter:",
               "RECSYS_ADAPTER__SIGNING_KEY": "sign", "RECSYS_EXPLAIN__BACKEND": "openai",
               "RECSYS_EXPLAIN__BASE_URL": f"http://127.0.0.1:{free_port()}/v1",  # down: template fallbacks
               "RECSYS_LEARNER_METRICS_PORT": str(learner_port), "RECSYS_BATCH__MAX_WAIT_MS": "100"}  # fmt: skip
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ROOT / "deploy/prometheus/rules.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{svc_port}"]}]
        config["scrape_configs"][1]["static_configs"] = [{"targets": [f"127.0.0.1:{learner_port}"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        try:
            uvicorn = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(svc_port),
                       "--log-level", "warning"]  # fmt: skip
            procs.append(subprocess.Popen(uvicorn, cwd=ROOT, env=env))
            procs.append(subprocess.Popen([sys.executable, "-m", "learner"], cwd=ROOT, env=env,
                                          stderr=subprocess.DEVNULL))  # fmt: skip
            procs.append(subprocess.Popen([prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                           f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                           f"--web.listen-address=127.0.0.1:{prom_port}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
            service, prom = f"http://127.0.0.1:{svc_port}", f"http://127.0.0.1:{prom_port}"
            wait_http(f"{service}/readyz", 120)
            wait_http(f"http://127.0.0.1:{learner_port}/metrics", 120)
            wait_http(f"{prom}/-/ready", 60)
            _traffic(service, kafka.bootstrap, prefix)
            yield service, prom
        finally:
            for p in procs:
                p.kill()
                p.wait()
            _cleanup(prefix)


def _traffic(service: str, bootstrap: str, prefix: str) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis

    from common.adapter import Manifest, encode
    from common.adapter_store import RedisAdapterStore

    with httpx.Client(base_url=service, timeout=30) as c:
        for u in range(6):
            c.post("/recommend", json={"user_id": f"u{u}", "k": 3})
        c.post("/recommend", json={"user_id": "u1", "k": 0})  # a 422
        events = [{"user_id": f"u{n % 6}", "item_id": f"m{n % 40}", "type": "click"} for n in range(60)]
        assert c.post("/feedback", json={"events": events}).status_code == 202

    async def side_effects() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        await p.send_and_wait("recsys.feedback", b"not json", key=b"u1")  # a poison record: dead letter
        await p.stop()
        redis = Redis.from_url(REDIS_URL)
        bad = encode({"A": __import__("numpy").zeros((1, 1), "float32")}, Manifest(10_000, "x", {"A": [1, 1]}, 0),
                     b"wrong key")  # fmt: skip
        await RedisAdapterStore(redis, prefix + "adapter:").publish(10_000, bad, [])  # refused by the service
        await redis.aclose()

    asyncio.run(side_effects())


def _cleanup(prefix: str) -> None:
    import asyncio

    from redis.asyncio import Redis

    async def run() -> None:
        redis = Redis.from_url(REDIS_URL)
        await delete_prefixed(redis, prefix)
        await redis.aclose()

    asyncio.run(run())


def _query(prom: str, expr: str) -> dict[str, object]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body: dict[str, object] = r.json()
    return body


def test_dashboard_queries_return_data_and_rules_evaluate(stack: tuple[str, str]) -> None:
    _, prom = stack
    deadline = time.monotonic() + 90
    missing = PANEL_EXPRS
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        missing = [e for e in PANEL_EXPRS if not _query(prom, e).get("data", {}).get("result")]  # type: ignore[union-attr]
    assert missing == [], "panels without data after traffic"
    for expr in RULE_EXPRS:  # alerts are comparisons (empty while not firing): they must parse and evaluate
        assert _query(prom, expr)["status"] == "success", expr
    rules = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [r for g in rules for r in g["rules"]]
    assert len(loaded) == len(RULE_EXPRS)
    assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
    targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert sorted(t["health"] for t in targets) == ["up", "up"]


def test_promtool_accepts_the_rules(prometheus_binary: str) -> None:
    promtool = Path(prometheus_binary).with_name("promtool")
    out = subprocess.run([str(promtool), "check", "rules", str(ROOT / "deploy/prometheus/rules.yml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
