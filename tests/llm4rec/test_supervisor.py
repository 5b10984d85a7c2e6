"""The supervisor behind `llm4rec up` with stand-in children (plain Python processes): a child's exit
stops the rest, SIGTERM reaches a child's own children, SIGKILL at the deadline. The real service and
learner, stopped by signals: tests/llm4rec/test_cli.py, which shares the process-table helpers here."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from llm4rec.supervisor import supervise


def descendants(pid: int) -> set[int]:
    """The pids below `pid` in the process tree, read from /proc (psutil is not a dependency)."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # exited while being read
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's wait is missing


def exits_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _exit_once_written(path: Path, code: int) -> list[str]:
    wait = f"while not os.path.exists({str(path)!r}): time.sleep(0.05)"
    return _python(f"import os, time\n{wait}\nraise SystemExit({code})")


def test_a_child_that_exits_stops_the_others_and_their_own_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    spawner = _python(f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
                      f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")  # fmt: skip
    start = time.monotonic()
    assert supervise([spawner, _exit_once_written(pid_file, 3)], grace_s=5) == 1  # unrequested: a failure
    assert time.monotonic() - start < 5  # the spawner took SIGTERM: no need to wait out the deadline
    # SIGTERM went to the spawner's whole process group; the grandchild dies when next scheduled, which
    # on a loaded machine can be after supervise returns (it would otherwise sleep for a minute)
    assert exits_within(int(pid_file.read_text()), 2.0)


def test_a_child_that_ignores_sigterm_is_killed_at_the_deadline(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    stubborn = _python(f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       f"open({str(ready)!r}, 'w').close(); time.sleep(60)")  # fmt: skip
    start = time.monotonic()
    assert supervise([stubborn, _exit_once_written(ready, 0)], grace_s=1) == 1  # killed: not a clean stop
    assert 1 <= time.monotonic() - start < 5
