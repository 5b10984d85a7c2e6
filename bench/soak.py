"""Soak: a fixed rate of mixed traffic (90% `POST /recommend`, 10% `POST /feedback`) against the running
service (uvicorn, embedded defaults: in-process learner publishing adapters) for `--minutes`; per minute
the requests sent, errors, latency percentiles, the adapter version served and the service's resident
memory. Writes the `soak` section of RELIABILITY.md.

    python bench/soak.py --model runs/llm4rec [--minutes 10] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from markdown_sections import command_line, write_section

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.net import wait_http  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection with hand-written requests: a Python load generator built on a
    full HTTP client spent more CPU than the service it measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload


async def worker(conn: Connection, due: asyncio.Queue[float], rng: random.Random, lat: list[float],
                 errors: list[int], versions: list[int]) -> None:  # fmt: skip
    while True:
        scheduled = await due.get()
        user = str(rng.randint(1, 610))
        try:
            if rng.random() < 0.9:
                status, payload = await conn.post("/recommend", json.dumps({"user_id": user, "k": 10}).encode())
                if status == 200:
                    versions.append(json.loads(payload)["adapter_version"])
            else:
                events = [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": str(rng.randint(1, 3000)),
                           "type": "click"} for _ in range(5)]  # fmt: skip
                status, _ = await conn.post("/feedback", json.dumps({"events": events}).encode())
            if status >= 500 or status == 429:
                errors.append(status)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors.append(-1)
            conn.writer = None
        # from the scheduled time: a slow server shows as latency, not as a slower request rate
        lat.append(time.perf_counter() - scheduled)


async def drive(port: int, pid: int, minutes: int, rate: float, warmup_s: float, connections: int = 64) -> list[str]:
    """A linear ramp from 0 to `rate` over `warmup_s` (caches fill: a cold start at full rate queues up
    and an open-loop generator never lets the backlog drain), then `minutes` at `rate`, a row each."""
    rng = random.Random(0)
    due: asyncio.Queue[float] = asyncio.Queue()
    lat: list[float] = []
    errors: list[int] = []
    versions: list[int] = []
    workers = [asyncio.create_task(worker(Connection("127.0.0.1", port), due, rng, lat, errors, versions))
               for _ in range(connections)]  # fmt: skip
    start = time.perf_counter()
    sent = 0

    async def send_until(end: float, schedule: Callable[[float], float]) -> None:
        """Open loop: every request goes out at its scheduled time, whatever the replies do."""
        nonlocal sent
        while (now := time.perf_counter() - start) < end:
            while schedule(sent + 1) <= now:
                sent += 1
                due.put_nowait(start + schedule(sent))
            await asyncio.sleep(0.002)

    # n requests by time t: rate * t^2 / (2 * warmup) on the ramp, then rate per second
    ramp_n = rate * warmup_s / 2
    rows = []
    if warmup_s > 0:
        await send_until(warmup_s, lambda n: (2 * warmup_s * n / rate) ** 0.5)
        rows.append(_row("warm-up", sent, warmup_s, lat, errors, versions, pid))
        print(rows[-1], flush=True)
    for minute in range(1, minutes + 1):
        lat.clear()
        errors.clear()
        versions.clear()
        before = sent
        await send_until(warmup_s + 60 * minute, lambda n: warmup_s + (n - ramp_n) / rate)
        rows.append(_row(str(minute), sent - before, 60, lat, errors, versions, pid))
        print(rows[-1], flush=True)
    for w in workers:
        w.cancel()
    return rows


def _row(label: str, n: int, seconds: float, lat: list[float], errors: list[int], versions: list[int], pid: int) -> str:
    ms = np.array(lat) * 1000
    return (f"| {label} | {n} | {n / seconds:.0f} | {len(errors)} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 95):.1f} | {np.percentile(ms, 99):.1f} | {max(versions, default=0)} | "
            f"{rss_mib(pid):.0f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "runs/llm4rec")
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--port", type=int, default=8131)
    p.add_argument("--warmup", type=float, default=60, help="seconds of linear ramp before the measured minutes")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    env = {**os.environ, "RECSYS_MODEL_DIR": str(args.model), "RECSYS_INDEX__LOCATION": str(ROOT / ".cache/index"),
           "RECSYS_CACHE_DIR": str(ROOT / ".cache/text-embeddings"), "RECSYS_FEEDBACK__SPOOL_DIR": str(work / "spool"),
           "RECSYS_ADDED_ITEMS_LOG": str(work / "added.jsonl"), "RECSYS_STATE_DIR": str(work / "state")}  # fmt: skip
    # `llm4rec serve`: with no Kafka configured the learner runs in the service and publishes adapters
    proc = subprocess.Popen([sys.executable, "-m", "llm4rec", "serve", "--port", str(args.port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{args.port}/readyz", timeout_s=900, ok=300)
        rows = asyncio.run(drive(args.port, proc.pid, args.minutes, args.rate, args.warmup))
    finally:
        proc.terminate()
        proc.wait(30)
    rss = [float(r.split("|")[9]) for r in rows]
    warm = rss[min(1, len(rss) - 1)]
    growth = 100 * (rss[-1] / warm - 1)
    total, errors = (sum(int(r.split("|")[i]) for r in rows[1:]) for i in (2, 4))
    head = ["| minute | requests | per s | errors | p50 ms | p95 ms | p99 ms | adapter version | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    body = (f"## Soak\n\nCommand: `{command_line()}`. `llm4rec serve` on the embedded "
            f"defaults (in-process learner adapting from the feedback), an open-loop generator (64 keep-alive "
            f"connections, latency from each request's scheduled time) ramping from 0 to {args.rate:.0f} "
            f"requests/s over {args.warmup:.0f} s, then {args.minutes} minutes at {args.rate:.0f} (90% "
            "`/recommend` k = 10 with explanations, 10% `/feedback` with 5 events) from a second "
            "process on the same 2 cores; errors are 5xx, 429 and transport failures.\n\n" + "\n".join(head + rows) +
            f"\n\nAt full rate: {total} requests, {errors} errors. Resident memory after the first full-rate "
            f"minute {warm:.0f} MiB, at the end {rss[-1]:.0f} MiB: {growth:+.1f}% (target under 5%).\n")  # fmt: skip
    print(body)
    write_section("soak", body, ROOT / "RELIABILITY.md")


if __name__ == "__main__":
    main()
