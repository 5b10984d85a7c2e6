"""Load on `POST /recommend`: latency percentiles and throughput at several concurrencies, and where
the time goes (per stage), against the real service process on loopback.

    python bench/service_load.py --model runs/llm4rec [--duration 15] [--concurrency 1,8,32] [--redis]
        [--llm-requests 20]

The service runs as its own process (`python -m service`, one uvicorn worker) on the embedded defaults
(Qdrant Edge index, RAG context, template explanations); wrk (Debian's `wrk`) generates the load from
a second process with random known users, k = 10. The stage split comes from the service's own
Prometheus histograms. With --llm-requests N it then restarts the service with the in-process llama.cpp
explainer and reports the added latency over N sequential requests. Rewrites the `service-load`
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from markdown_sections import command_line, write_section
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.net: loopback helpers shared with the tests

from tests.net import wait_http  # noqa: E402

WRK_SCRIPT = """
math.randomseed(7)
local users = {%s}
request = function()
  local u = users[math.random(#users)]
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"},
                    '{"user_id": "' .. u .. '", "k": 10}')
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"p50": %%f, "p95": %%f, "p99": %%f, "requests": %%d, "seconds": %%f, ' ..
    '"errors": %%d, "non2xx": %%d}\\n', latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


@contextmanager
def service(model: Path, port: int, env_extra: dict[str, str]) -> Iterator[str]:
    env = {**os.environ, "RECSYS_MODEL_DIR": str(model), "RECSYS_INDEX__LOCATION": str(ROOT / ".cache/index"),
           "RECSYS_CACHE_DIR": str(ROOT / ".cache/text-embeddings"), **env_extra}  # fmt: skip
    cmd = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--port", str(port),
           "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", timeout_s=600, ok=300)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) per stage, plus the whole request per endpoint, from the service's histograms."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name not in ("recsys_recommend_stage_duration_seconds", "recsys_http_request_duration_seconds"):
            continue
        for sample in family.samples:
            label = sample.labels.get("stage") or f"whole {sample.labels.get('endpoint')}"
            if sample.name.endswith("_sum"):
                out.setdefault(label, [0.0, 0.0])[0] += sample.value
            elif sample.name.endswith("_count"):
                out.setdefault(label, [0.0, 0.0])[1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def run_wrk(url: str, users: list[str], concurrency: int, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % ", ".join(f'"{u}"' for u in users))
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s", "-s", f.name, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    Path(f.name).unlink()
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


def healthz_rps(url: str, seconds: int) -> float:
    """The same server answering GET /healthz at concurrency 8: the in-run baseline (this machine is
    shared, so absolute requests/s move between runs; the ratio to this moves much less)."""
    cmd = ["wrk", "-t1", "-c8", f"-d{seconds}s", f"{url}/healthz"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def stage_split(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds per request for each stage between two scrapes."""
    out = {}
    for label, (s, c) in after.items():
        s0, c0 = before.get(label, (0.0, 0.0))
        if c > c0:
            out[label] = 1000 * (s - s0) / (c - c0)
    return out


def load_table(url: str, users: list[str], levels: list[int], seconds: int) -> tuple[list[str], dict[str, float]]:
    rows = []
    split: dict[str, float] = {}
    run_wrk(url, users, 4, 3)  # warm-up: caches, first-call paths
    for c in levels:
        before = stage_sums(url)
        r = run_wrk(url, users, c, seconds)
        after = stage_sums(url)
        if c == 1:
            split = stage_split(before, after)
        rps = r["requests"] / r["seconds"]
        rows.append(f"| {c} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {rps:.0f} | "
                    f"{r['requests']} | {r['errors'] + r['non2xx']} |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows, split


def uncached_user_encoding(model: Path, users: int = 200) -> str:
    """The generative user model over a full history, as on a cache miss (after feedback): in process."""
    import numpy as np
    import torch

    from retrieval.user_models import user_vectors
    from training.experiment import open_checkpoint

    torch.set_num_threads(1)
    ck = open_checkpoint(model, ROOT / ".cache/text-embeddings")
    seqs = list(ck.train.sequences().values())[:users]
    times = []
    for s in seqs:
        t = time.perf_counter()
        user_vectors(ck.model, [s[-200:].tolist()])
        times.append(1000 * (time.perf_counter() - t))
    return f"p50 {np.median(times):.2f} ms, p99 {np.percentile(times, 99):.2f} ms over {len(seqs)} users"


def llm_added_latency(model: Path, port: int, users: list[str], n: int) -> str:
    """Sequential requests with template vs in-process llama.cpp wording: the added milliseconds."""
    out = []
    for backend in ("template", "llama-cpp"):
        env = {"RECSYS_EXPLAIN__BACKEND": backend, "RECSYS_EXPLAIN__TIMEOUT_S": "60"}
        with service(model, port, env) as url, httpx.Client(timeout=120) as client:
            client.post(f"{url}/recommend", json={"user_id": users[0], "k": 10})  # warm-up
            times = []
            for u in users[:n]:
                t = time.perf_counter()
                client.post(f"{url}/recommend", json={"user_id": u, "k": 10}).raise_for_status()
                times.append(1000 * (time.perf_counter() - t))
            text = client.get(f"{url}/metrics").text
        fallbacks = sum(float(v) for v in re.findall(r"recsys_explainer_fallbacks_total\{[^}]*\} (\S+)", text))
        times.sort()
        out.append(f"| {backend} | {times[len(times) // 2]:.0f} | {times[int(0.95 * (len(times) - 1))]:.0f} | "
                   f"{int(fallbacks)} of {10 * n} |")  # fmt: skip
        print(out[-1], flush=True)
    return "\n".join(["| wording | p50 ms | p95 ms | template fallbacks |", "|---|---|---|---|", *out])


def _rps(row: str) -> float:
    return float(row.split("|")[5])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/llm4rec")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--redis", action="store_true", help="history in the local Redis instead of in-process")
    p.add_argument("--llm-requests", type=int, default=0)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    env = {
        "RECSYS_FEEDBACK__SPOOL_DIR": tempfile.mkdtemp(prefix="bench-spool-"),
        "RECSYS_STATE_DIR": tempfile.mkdtemp(prefix="bench-state-"),
    }
    if args.redis:
        env |= {"RECSYS_REDIS_URL": "redis://127.0.0.1:6379/0", "RECSYS_HISTORY_PREFIX": "bench:history:"}
    with service(args.model, args.port, env) as url:
        users = [str(u) for u in range(1, 501)]
        rows, split = load_table(url, users, [int(c) for c in args.concurrency.split(",")], args.duration)
        baseline = healthz_rps(url, args.duration)
    head = ["| concurrency | p50 ms | p95 ms | p99 ms | requests/s | requests | errors |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    stages = " · ".join(f"{k} {v:.2f} ms" for k, v in split.items())
    history = "in Redis" if args.redis else "in process"
    body = (f"## Service load\n\nCommand: `{command_line()}`. One uvicorn "
            f"worker (`python -m uvicorn service.app:create_app --factory`), embedded defaults, history {history}, "
            "`POST /recommend` with k = 10 and template explanations (RAG context on) for random known users; wrk "
            f"on the same 2-core machine ({args.duration} s per level).\n\n"
            + "\n".join(head + rows) + f"\n\nBaseline in the same run: GET /healthz (no work) at concurrency 8 answers "
            f"{baseline:,.0f} requests/s on this server; `/recommend` reaches "
            f"{_rps(rows[min(1, len(rows) - 1)]) / baseline:.0%} of that at concurrency 8."
            f"\n\nMean per request at concurrency 1: {stages}. User vectors are cached "
            "per exact history (they change only with feedback) and RAG entries per item for 10 minutes, so after "
            "the warm-up these figures are cache hits; a miss (the first request after a feedback event) costs the "
            f"user model over the history, measured in process with one thread: {uncached_user_encoding(args.model)}."
            "\n")  # fmt: skip
    if args.llm_requests:
        body += ("\n### With the in-process llama.cpp explainer (Gemma 3 270M, 2 threads)\n\n"
                 f"{args.llm_requests} sequential requests each, k = 10 (ten wordings per request):\n\n"
                 + llm_added_latency(args.model, args.port, users, args.llm_requests) + "\n")  # fmt: skip
    print(body)
    write_section("service-load", body)


if __name__ == "__main__":
    main()
