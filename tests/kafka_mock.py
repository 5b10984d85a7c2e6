"""librdkafka's mock cluster (a real Kafka protocol peer on loopback) in a child process, so a test can
freeze it (SIGSTOP: the broker stops answering, connections hang, as in a network partition) and
resume it (SIGCONT) with its log intact. `python -m tests.kafka_mock` prints `bootstrap.servers` and
keeps the cluster up until its stdin closes."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class MockKafka:
    bootstrap: str
    process: subprocess.Popen[str]

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


async def read_topic(bootstrap: str, topic: str, expect: int, timeout_s: float = 20.0) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record on the topic, from the start, once `expect` have arrived or the
    time is up (then more may exist: the caller compares counts)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for records in (await c.getmany(timeout_ms=200)).values():
                out.extend((r.key, r.value) for r in records)
            if len(out) >= expect:
                for records in (await c.getmany(timeout_ms=500)).values():  # anything beyond: duplicates
                    out.extend((r.key, r.value) for r in records)
                break
    finally:
        await c.stop()
    return out


@contextmanager
def mock_kafka() -> Iterator[MockKafka]:
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen([sys.executable, "-m", "tests.kafka_mock"], cwd=root, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if not line:
            raise RuntimeError("mock Kafka cluster did not start")
        yield MockKafka(line, p)
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.kill()
        p.wait()


def _serve() -> None:
    from confluent_kafka import Producer

    found: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.search(r"bootstrap\.servers=([0-9.:,]+)", record.getMessage())
            if m and not found:
                found.append(m.group(1).rstrip(","))
                print(found[0], flush=True)

    log = logging.getLogger("kafka-mock")
    log.addHandler(Grab())
    log.setLevel(logging.DEBUG)
    # the producer hosts the mock cluster; it lives as long as this process
    p = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "unused:1", "debug": "mock", "logger": log})
    p.poll(0.5)
    sys.stdin.read()  # until the parent closes the pipe or kills us


if __name__ == "__main__":
    _serve()
