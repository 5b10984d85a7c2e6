"""The process supervisor behind `llm4rec up`, in the pattern of honcho and supervisord: start each
child in its own session, stop all of them on SIGTERM or SIGINT (or when one exits by itself) by
sending SIGTERM to each child's process group, wait for them up to a deadline, then SIGKILL what is
left. Nothing is left running after `supervise` returns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

import structlog

log = structlog.get_logger()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
POLL_S = 0.1


def supervise(commands: Sequence[Sequence[str]], grace_s: float = 8.0) -> int:
    """Run the commands until a stop signal arrives or one of them exits; the exit code is 0 when the
    stop was requested (or every child ended cleanly) and every child stopped within `grace_s`."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # only recorded: the loop below acts on it outside the handler

    # Installed with signal.signal even where SIGINT was ignored at start (a shell's background job):
    # a supervisor must not inherit "ignore Ctrl-C". exec() resets caught signals to their default
    # in the children, so they take SIGINT and SIGTERM again, whatever this process was started with.
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            # own session: a terminal's Ctrl-C reaches only this process, which stops each child once
            procs.append(subprocess.Popen(command, start_new_session=True))
        while not received and all(p.poll() is None for p in procs):
            time.sleep(POLL_S)
    finally:
        requested = bool(received)
        if requested:
            log.info("stop_requested", signal=signal.Signals(received[0]).name)
        killed = _stop(procs, grace_s, received)
        for s, handler in previous.items():
            signal.signal(s, handler)
    clean = (0, -signal.SIGTERM, -signal.SIGINT) if requested else (0,)
    return 0 if not killed and all(p.returncode in clean for p in procs) else 1


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float, received: list[int]) -> bool:
    """SIGTERM to every child's group, wait until `grace_s` (a second stop signal cuts it short), then
    SIGKILL the groups still running. True when any had to be killed."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    signals_seen = len(received)
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline and len(received) <= signals_seen:
        time.sleep(POLL_S)
    left = [p for p in procs if p.poll() is None]
    for p in left:
        log.warning("child_killed", pid=p.pid, args=p.args, grace_s=grace_s)
        _signal_group(p, signal.SIGKILL)
        p.wait()
    return bool(left)


def _signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already gone
        os.killpg(p.pid, sig)  # the child leads its session's group: this reaches its own children too
