"""Periodic warm fine-tune of the served checkpoint (`training.finetune`, run as `llm4rec finetune` in a
child process): what the streaming learner cannot learn (every item's served vector, the transformer
itself), learnt every `fine_tune.every_events` positive events, indexed, and handed to a `landed`
callback that makes it served: the embedded service swaps it in (llm4rec/embedded.py), the Kafka
learner names it in Redis for every replica and restarts on it (learner/__main__.py). BENCHMARKS.md
(learner reading) measures the same fine-tune in the prequential replay against frozen, the learner
alone and a retrain from scratch.

What survives a kill, step by step:
- positive feedback is appended, fsynced, to `pending.jsonl` in `<state_dir>/fine-tune` before it is
  acknowledged upstream (the service's spool, or the learner's Kafka offsets, let it go only after);
- a fine-tune takes that file by renaming it `taken-<model version>.jsonl`; feedback arriving meanwhile
  starts a new pending file;
- the child writes the new checkpoint to `<model_dir>.partial` and indexes it under its own collection
  (the served index is untouched), then the folders are exchanged (`exchange`) and the taken file
  deleted.
`recover`, at start, undoes a half-done exchange and gives a taken file whose fine-tune did not land
back to the pending events. Children die with their parent (`common.process.die_with_parent`), so a
killed process leaves no training behind to race the next start's.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import anyio
import structlog

from common.events import FeedbackEvent
from common.process import PARENT_PID
from common.settings import ProcessSettings
from learner.metrics import LearnerMetrics
from learner.settings import FineTuneSettings
from training.checkpoint import WEIGHTS, checkpoint_version

log = structlog.get_logger()
PENDING = "pending.jsonl"


class BuildFailedError(RuntimeError):
    """A child process (training, fine-tune, indexing) exited with an error; its output is in the log."""


async def run_child(what: str, log_path: Path, command: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run `command` (`env`: variables added to this process's), its output appended to `log_path`;
    raises BuildFailedError when it fails. Cancelled, it stops the child."""
    log.info("background_build_step", step=what)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    variables = {**os.environ, PARENT_PID: str(os.getpid()), **(env or {})}  # the child dies with this process
    with log_path.open("ab") as out:
        child = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                     env=variables)  # fmt: skip
        try:
            code = await child.wait()
        except asyncio.CancelledError:
            child.terminate()
            await child.wait()
            raise
    if code != 0:
        raise BuildFailedError(f"{what} exited with {code}")


class PendingFeedback:
    """Positive feedback the served model was not trained on: a JSON-lines file, fsynced per append."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.path = folder, folder / PENDING
        _drop_torn_line(self.path)
        self.count = _lines(self.path)

    def append(self, events: Sequence[FeedbackEvent]) -> None:
        if events:
            # without the served user vectors: a fine-tune reads none, and each would be most of its line
            lines = (e.model_dump_json(exclude={"served"}).encode() + b"\n" for e in events)
            _write(self.path, b"".join(lines), "ab")
            self.count += len(events)

    def take(self, version: str) -> Path:
        """The pending events, moved aside for a fine-tune of model `version`; new ones start afresh."""
        taken = self.folder / f"taken-{version}.jsonl"
        self.path.touch()
        self.path.replace(taken)
        self.count = 0
        return taken

    def give_back(self, taken: Path) -> None:
        """A fine-tune that did not land: its events go back in front of those that arrived since."""
        later = self.path.read_bytes() if self.path.exists() else b""
        tmp = self.path.with_suffix(".tmp")
        _write(tmp, taken.read_bytes() + later, "wb")
        tmp.replace(self.path)
        taken.unlink()
        self.count = _lines(self.path)

    def recover(self, served: str | None) -> None:
        """After a kill: a taken file of the served model's version did not land (given back); one of
        another version did (the served model holds its events)."""
        for taken in sorted(self.folder.glob("taken-*.jsonl")):
            if taken.stem.removeprefix("taken-") == served:
                self.give_back(taken)
            else:
                taken.unlink()


def _write(path: Path, data: bytes, mode: str) -> None:
    with path.open(mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_line(path: Path) -> None:
    """A kill during an append can leave half a line at the end (never acknowledged: it is delivered
    again); cut it, or every later fine-tune would fail on it."""
    if path.exists() and (data := path.read_bytes()) and not data.endswith(b"\n"):
        with path.open("r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def exchange(new: Path, current: Path) -> None:
    """`new` becomes `current`; the old one is deleted. A kill between the two renames leaves
    `<current>.previous` and no `current`, which `recover` puts back."""
    previous = _previous(current)
    shutil.rmtree(previous, ignore_errors=True)
    current.replace(previous)
    new.replace(current)
    shutil.rmtree(previous)


def _previous(model_dir: Path) -> Path:
    return model_dir.with_name(model_dir.name + ".previous")


def fine_tune_folder(settings: ProcessSettings) -> Path | None:
    """Where the pending feedback lives; None (no fine-tune) for a process that keeps no local state."""
    return settings.state_dir / "fine-tune" if settings.state_dir is not None else None


def recover(settings: ProcessSettings) -> None:
    """Before a process loads its model: finish what a killed fine-tune left half done."""
    model_dir, previous = settings.model_dir, _previous(settings.model_dir)
    if previous.is_dir():
        if not model_dir.exists():
            previous.replace(model_dir)
            log.warning("model_dir_restored", model_dir=str(model_dir), reason="a fine-tune's exchange was cut")
        shutil.rmtree(previous, ignore_errors=True)
    if (folder := fine_tune_folder(settings)) is not None:
        served = checkpoint_version(model_dir) if (model_dir / WEIGHTS).is_file() else None
        PendingFeedback(folder).recover(served)


class PeriodicFineTune:
    """Records positive feedback (`record`) and, every `every_events` of it (at most every
    `min_interval_s`, and never while `busy()`), fine-tunes and indexes the checkpoint in child
    processes (`run`, a task), exchanges the folders and calls `landed(old version, new version)`.
    `status` is told each step ("" when done)."""

    def __init__(self, settings: ProcessSettings, config: FineTuneSettings, log_path: Path,
                 landed: Callable[[str, str], Awaitable[None]], metrics: LearnerMetrics,
                 status: Callable[[str], None] = lambda step: None,
                 busy: Callable[[], bool] = lambda: False) -> None:  # fmt: skip
        folder = fine_tune_folder(settings)
        assert folder is not None, "the fine-tune keeps its pending feedback in the state folder"
        self.settings, self.config, self.log_path, self.landed = settings, config, log_path, landed
        self.metrics, self.status, self.busy = metrics, status, busy
        self.pending = PendingFeedback(folder)
        # the pending file's writes (fsynced) run off the event loop, one at a time and in call order
        self._writes = anyio.CapacityLimiter(1)
        self.due = asyncio.Event()
        self.done = 0  # fine-tunes landed by this process
        self._last = -float("inf")
        self._check_due()

    async def record(self, events: Sequence[FeedbackEvent]) -> None:
        positives = [e for e in events if e.is_positive]
        await anyio.to_thread.run_sync(self.pending.append, positives, limiter=self._writes)
        self._check_due()

    def _check_due(self) -> None:
        self.metrics.fine_tune_pending.set(self.pending.count)
        if self.pending.count >= self.config.every_events:
            self.due.set()

    async def run(self) -> None:
        while True:
            await self.due.wait()
            await asyncio.sleep(max(0.0, self._last + self.config.min_interval_s - time.monotonic()))
            while self.busy():  # e.g. the service's start-up build, which swaps models too
                await asyncio.sleep(1)
            self.due.clear()
            self._last = time.monotonic()
            try:
                landed = await self.fine_tune()
            except Exception:  # serving what was built failed: the old model keeps serving
                log.exception("fine_tune_not_served")
                landed = False
            self.metrics.fine_tunes.labels("landed" if landed else "failed").inc()
            self._check_due()

    async def fine_tune(self) -> bool:
        """One fine-tune on the pending feedback, landed; False (and the events kept for the next one)
        when a child fails. The served model keeps serving throughout."""
        s, c, started = self.settings, self.config, time.monotonic()
        old = checkpoint_version(s.model_dir)
        taken = await anyio.to_thread.run_sync(self.pending.take, old, limiter=self._writes)
        staging = s.model_dir.with_name(s.model_dir.name + ".partial")
        llm4rec, cache = [sys.executable, "-m", "llm4rec"], ["--cache-dir", str(s.cache_dir)]
        env = {"OMP_NUM_THREADS": str(c.threads), "MKL_NUM_THREADS": str(c.threads)}
        steps = {
            "fine-tuning on the feedback since the last model": [
                "finetune", "--model", str(s.model_dir), "--events", str(taken), "--out", str(staging),
                "--epochs", str(c.epochs), "--seed", str(self.done)],
            "indexing the fine-tuned model": [
                "index", "build", "--model", str(staging), "--location", s.index.location, "--no-context"],
        }  # fmt: skip
        try:
            shutil.rmtree(staging, ignore_errors=True)
            for what, args in steps.items():
                self.status(what)
                await run_child(what, self.log_path, [*llm4rec, *args, *cache], env)
        except BuildFailedError as e:
            await anyio.to_thread.run_sync(self.pending.give_back, taken, limiter=self._writes)
            log.error("fine_tune_failed", error=str(e), log=str(self.log_path))
            return False
        finally:
            self.status("")
        exchange(staging, s.model_dir)
        taken.unlink()
        new = checkpoint_version(s.model_dir)
        await self.landed(old, new)
        self.done += 1
        self.metrics.fine_tune_seconds.set(seconds := time.monotonic() - started)
        log.info("fine_tune_landed", model_version=new, replaced=old, seconds=round(seconds))
        return True
