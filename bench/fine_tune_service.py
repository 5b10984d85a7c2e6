"""The embedded service fine-tuning itself (`learner/fine_tune.py`): `llm4rec serve` on a copy of a
temporal checkpoint, fed the stream that followed its training (the first `--events` first-time
user-item pairs after the cut, as clicks through `POST /feedback`) so that one periodic fine-tune falls
due. Measures how long until the fine-tuned model answers, what `/recommend` latency does while the
child process trains beside the service (against the same probe before, as a ratio), and whether any
request failed.

    python bench/fine_tune_service.py --model runs/temporal-ml-latest-small [--events 6700] [--rate 10]

Rewrites the `fine-tune-service` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_answer import fresh_env  # noqa: E402
from learner_bench import _stream  # noqa: E402
from markdown_sections import command_line, machine, write_section  # noqa: E402

from tests.net import free_port, wait_http  # noqa: E402
from training.experiment import open_checkpoint  # noqa: E402


class Probe(threading.Thread):
    """`/recommend` for a known user at `rate` per second: (seconds since start, latency ms, model
    version or None for a failure) per request, until stopped."""

    def __init__(self, base: str, users: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.base, self.users, self.rate = base, users, rate
        self.samples: list[tuple[float, float, str | None]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                tick = time.monotonic()
                user = self.users[int(rng.integers(len(self.users)))]
                try:
                    r = client.post(f"{self.base}/recommend", json={"user_id": user, "k": 10})
                    version = r.json()["model_version"] if r.status_code == 200 else None
                except httpx.HTTPError:
                    version = None
                done = time.monotonic()
                self.samples.append((tick - self.t0, 1000 * (done - tick), version))
                time.sleep(max(0.0, 1 / self.rate - (done - tick)))


def feed(base: str, events: list[dict[str, object]], batch: int = 100) -> None:
    with httpx.Client(timeout=30) as client:
        for lo in range(0, len(events), batch):
            r = client.post(f"{base}/feedback", json={"events": events[lo : lo + batch]})
            assert r.status_code == 202, r.text
            time.sleep(0.05)  # within the default write rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/temporal-ml-latest-small")
    p.add_argument("--events", type=int, default=6700, help="events fed; also the fine-tune's trigger")
    p.add_argument("--rate", type=float, default=10.0, help="/recommend requests per second")
    p.add_argument("--baseline-s", type=float, default=60.0)
    args = p.parse_args()
    ck = open_checkpoint(args.model, ROOT / ".cache/text-embeddings")
    stream = _stream(ck)[: args.events]
    events = [{"user_id": ck.data.user_ids[u], "item_id": ck.data.item_ids[i], "type": "click", "timestamp": t}
              for u, i, t in stream]  # fmt: skip
    users = sorted({str(e["user_id"]) for e in events})

    work, port = Path(tempfile.mkdtemp(prefix="fine-tune-service-")), free_port()
    shutil.copytree(args.model, work / "runs/llm4rec")
    env = fresh_env(work) | {"RECSYS_CACHE_DIR": str(ROOT / ".cache/text-embeddings"),
                             "RECSYS_FINE_TUNE__EVERY_EVENTS": str(args.events),
                             "RECSYS_FINE_TUNE__MIN_INTERVAL_S": "0"}  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with (work / "serve.log").open("wb") as log:
        serve = subprocess.Popen([sys.executable, "-m", "llm4rec", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                 stdout=log, stderr=log)  # fmt: skip
        try:
            wait_http(f"{base}/readyz", timeout_s=900, ok=300)
            # the RAG context, embedded at first start (the service answers slowly meanwhile: not measured here)
            while httpx.get(f"{base}/readyz", timeout=120).json()["building"]:
                time.sleep(1)
            old = httpx.get(f"{base}/readyz", timeout=120).json()["model_version"]
            probe = Probe(base, users, args.rate)
            probe.start()
            time.sleep(args.baseline_s)
            fed_at = time.monotonic() - probe.t0
            feed(base, events)
            accepted_at = time.monotonic() - probe.t0
            while not any(v not in (None, old) for _, _, v in probe.samples[-5:]):
                time.sleep(0.5)
            time.sleep(10)
            probe.stop.set()
            probe.join()
            metrics = httpx.get(f"{base}/metrics").text
        finally:
            started = time.monotonic()
            serve.send_signal(signal.SIGINT)
            serve.wait(60)
            stop_s = time.monotonic() - started
    print(report(probe.samples, old, fed_at, accepted_at, args, metrics, stop_s, work))


def report(samples: list[tuple[float, float, str | None]], old: str, fed_at: float, accepted_at: float,
           args: argparse.Namespace, metrics: str, stop_s: float, work: Path) -> str:  # fmt: skip
    new_at = min(t for t, _, v in samples if v not in (None, old))
    before = np.array([ms for t, ms, v in samples if t < fed_at and v is not None])
    during = np.array([ms for t, ms, v in samples if accepted_at <= t < new_at and v is not None])
    failed = sum(v is None for _, _, v in samples)
    seconds = next(s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                   if s.name == "recsys_learner_fine_tune_seconds")  # fmt: skip
    periods = (("before any feedback", before), ("while the fine-tune runs", during))
    rows = "\n".join(f"| {name} | {len(x)} | {np.median(x):.1f} | {np.percentile(x, 95):.1f} | {x.max():.1f} |"
                     for name, x in periods)  # fmt: skip
    ratio = np.percentile(during, 95) / np.percentile(before, 95)
    body = (
        f"## The service fine-tuning itself\n\nCommand: `{command_line()}` ({machine()}). `llm4rec serve` on a copy "
        f"of `{args.model.name}`, {args.events:,} clicks of the stream after its cut fed through `POST /feedback` "
        f"(batches of 100), which makes one periodic fine-tune due (`RECSYS_FINE_TUNE__EVERY_EVENTS={args.events}`); "
        f"`/recommend` (k = 10, explanations on) probed {args.rate:g} times a second throughout.\n\n"
        f"- From the last event accepted to the fine-tuned model's first answer: **{new_at - accepted_at:.0f} s** "
        f"(the service's own `recsys_learner_fine_tune_seconds`: {seconds:.0f} s, fine-tune, index, "
        "swap).\n"
        f"- Failed requests: **{failed}** of {len(samples)}; stop by SIGINT afterwards: {stop_s:.1f} s.\n"
        f"- `/recommend` latency, ms (p95 while fine-tuning / p95 before: **{ratio:.2f}x**):\n\n"
        f"| period | requests | p50 | p95 | max |\n|---|---|---|---|---|\n{rows}\n"
    )
    write_section("fine-tune-service", body, ROOT / "BENCHMARKS.md")
    return body + f"\nlog: {work / 'serve.log'}"


if __name__ == "__main__":
    main()
