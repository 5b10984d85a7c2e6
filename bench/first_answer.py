"""Time to first answer on a fresh machine: `llm4rec serve` started with no model, no index and an empty
text-embedding cache (what a fresh clone has after the install), queried from its first second until
the trained model (with RAG context) is swapped in, and a minute beyond. Records when each model
version first answered and every failed request.

    python bench/first_answer.py [--time-budget 300] [--rate 5] [--after-s 60]

Rewrites the `first-answer` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown_sections import command_line, write_section  # noqa: E402

from tests.net import free_port  # noqa: E402


def fresh_env(work: Path) -> dict[str, str]:
    """Every path the service writes, inside `work`: nothing from earlier runs is reused."""
    return {**os.environ, "RECSYS_MODEL_DIR": str(work / "runs/llm4rec"),
            "RECSYS_CACHE_DIR": str(work / ".cache/text-embeddings"),
            "RECSYS_INDEX__LOCATION": str(work / ".cache/index"),
            "RECSYS_FEEDBACK__SPOOL_DIR": str(work / ".cache/spool"),
            "RECSYS_ADDED_ITEMS_LOG": str(work / ".cache/added-items.jsonl"),
            "RECSYS_STATE_DIR": str(work / ".cache/state")}  # fmt: skip


def probe(base: str, rate: float, after_s: float, limit_s: float, t0: float) -> tuple[dict[str, float], int, int]:
    """Requests at `rate` per second: (first answer time per model version, requests, failures after the
    first answer). Stops `after_s` after the RAG context was swapped in, or at `limit_s`."""
    first: dict[str, float] = {}
    sent = failed = 0
    done_at: float | None = None
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - t0 < limit_s and (done_at is None or time.monotonic() < done_at + after_s):
            tick = time.monotonic()
            try:
                r = client.post(f"{base}/recommend", json={"user_id": "1", "k": 10})
                if r.status_code == 200:
                    first.setdefault(r.json()["model_version"], tick - t0)
                elif first:
                    failed += 1
                sent += bool(first)
                if done_at is None and client.get(f"{base}/readyz").json()["dependencies"]["context"] == "ready":
                    done_at = time.monotonic()
                    first["(the same, with RAG context)"] = done_at - t0
            except httpx.TransportError:
                failed += bool(first)  # before the first answer the server is still starting
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - tick)))
    return first, sent, failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-budget", type=float, default=300, help="llm4rec serve --time-budget")
    p.add_argument("--rate", type=float, default=5.0, help="requests per second")
    p.add_argument("--after-s", type=float, default=60.0, help="seconds measured after the last swap")
    p.add_argument("--limit-s", type=float, default=3600.0)
    args = p.parse_args()
    work, port = Path(tempfile.mkdtemp(prefix="first-answer-")), free_port()
    log = (work / "serve.log").open("wb")
    t0 = time.monotonic()
    command = [sys.executable, "-m", "llm4rec", "serve", "--port", str(port), "--time-budget", str(args.time_budget)]
    serve = subprocess.Popen(command, cwd=work, env=fresh_env(work), stdout=log, stderr=log)
    try:
        first, sent, failed = probe(f"http://127.0.0.1:{port}", args.rate, args.after_s, args.limit_s, t0)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    rows = "\n".join(
        f"| {v if v.startswith('(') else f'`{v}`'} | {t:.1f} |" for v, t in sorted(first.items(), key=lambda kv: kv[1])
    )
    print(rows, f"\n{sent} requests after the first answer, {failed} failed; log: {work / 'serve.log'}")
    body = (
        f"## First answer on a fresh machine\n\nCommand: `{command_line()}`. "
        "`llm4rec serve` started with no model, no index and an empty embedding cache; `/recommend` every "
        f"{1 / args.rate:.1f} s from the process start. Seconds from the start until each model version first "
        "answered (popularity alone, then content vectors, then the trained model, without and then with "
        "RAG context, which answer under the same version):\n\n"
        f"| model_version | first answer (s) |\n|---|---|\n{rows}\n\n"
        f"Requests after the first answer: {sent}, failed: **{failed}**.\n"
    )
    write_section("first-answer", body, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
