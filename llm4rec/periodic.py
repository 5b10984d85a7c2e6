"""The embedded default's periodic warm fine-tune (`training.finetune`, the `llm4rec finetune` command):
what the streaming learner cannot learn (every item's served vector, the transformer itself) learnt
every `fine_tune.every_events` positive events in a child process, indexed, and swapped in; the
in-process learner is then re-based on the new model. BENCHMARKS.md (learner reading) measures the
same fine-tune in the prequential replay against frozen, the learner alone and a retrain from scratch.

What survives a kill, step by step:
- accepted positive feedback is appended, fsynced, to `pending.jsonl` in the state folder before the
  spool lets it go;
- a fine-tune takes that file by renaming it `taken-<model version>.jsonl`; feedback arriving meanwhile
  starts a new pending file;
- the child writes the new checkpoint to `<model_dir>.partial` and indexes it under its own collection
  (the served index is untouched), then the folders are exchanged (`exchange`) and the taken file
  deleted; the service swaps the new bundle in.
`recover`, at start, undoes a half-done exchange and gives a taken file whose fine-tune did not land
back to the pending events; the child's output is appended to a log file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from common.events import FeedbackEvent
from common.process import refreeze
from learner.metrics import LearnerMetrics
from learner.settings import FineTuneSettings
from llm4rec.bootstrap import BuildFailedError, run_step
from service.settings import Settings
from service.state import ServiceState
from training.checkpoint import WEIGHTS, checkpoint_version

log = structlog.get_logger()
PENDING = "pending.jsonl"


class PendingFeedback:
    """Positive feedback the served model was not trained on: a JSON-lines file, fsynced per append."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.path = folder, folder / PENDING
        _drop_torn_line(self.path)
        self.count = _lines(self.path)

    def append(self, events: Sequence[FeedbackEvent]) -> None:
        if events:
            _write(self.path, b"".join(e.model_dump_json().encode() + b"\n" for e in events), "ab")
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
    """A kill during an append can leave half a line at the end (never acknowledged: the spool still
    holds those events); cut it, or every later fine-tune would fail on it."""
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


def recover(settings: Settings) -> None:
    """Before the service loads its model: finish what a killed fine-tune left half done."""
    model_dir, previous = settings.model_dir, _previous(settings.model_dir)
    if previous.is_dir():
        if not model_dir.exists():
            previous.replace(model_dir)
            log.warning("model_dir_restored", model_dir=str(model_dir), reason="a fine-tune's exchange was cut")
        shutil.rmtree(previous, ignore_errors=True)
    if settings.state_dir is not None:
        served = checkpoint_version(model_dir) if (model_dir / WEIGHTS).is_file() else None
        PendingFeedback(_folder(settings)).recover(served)


def _folder(settings: Settings) -> Path:
    assert settings.state_dir is not None, "the fine-tune keeps its pending feedback in the state folder"
    return settings.state_dir / "fine-tune"


class PeriodicFineTune:
    """Records positive feedback (`record`, a sink subscriber) and, every `every_events` of it (at most
    every `min_interval_s`), fine-tunes, indexes and swaps in the served model (`run`, a task), then
    calls `on_swapped` (the learner re-bases on the new model)."""

    def __init__(self, state: ServiceState, config: FineTuneSettings, log_path: Path,
                 on_swapped: Callable[[], Awaitable[object]], metrics: LearnerMetrics) -> None:  # fmt: skip
        self.state, self.config, self.log_path, self.on_swapped = state, config, log_path, on_swapped
        self.metrics = metrics
        self.pending = PendingFeedback(_folder(state.settings))
        self.due = asyncio.Event()
        self.done = 0  # fine-tunes swapped in by this process
        self._last = -float("inf")
        self._check_due()

    async def record(self, events: list[FeedbackEvent]) -> None:
        self.pending.append([e for e in events if e.is_positive])
        self._check_due()

    def _check_due(self) -> None:
        self.metrics.fine_tune_pending.set(self.pending.count)
        if self.pending.count >= self.config.every_events:
            self.due.set()

    async def run(self) -> None:
        while True:
            await self.due.wait()
            await asyncio.sleep(max(0.0, self._last + self.config.min_interval_s - time.monotonic()))
            while self.state.serving.building:  # the start-up build (RAG context) swaps bundles too
                await asyncio.sleep(1)
            self.due.clear()
            self._last = time.monotonic()
            try:
                landed = await self.fine_tune()
            except Exception:  # loading what was built failed: the old model keeps serving
                log.exception("fine_tune_swap_failed")
                landed = False
            self.metrics.fine_tunes.labels("swapped_in" if landed else "failed").inc()
            self._check_due()

    async def fine_tune(self) -> bool:
        """One fine-tune of the served model on the pending feedback, swapped in; False (and the events
        kept for the next one) when a step fails. The served model keeps serving throughout."""
        s, c = self.state.settings, self.config
        taken = self.pending.take(checkpoint_version(s.model_dir))
        staging = s.model_dir.with_name(s.model_dir.name + ".partial")
        llm4rec, cache = [sys.executable, "-m", "llm4rec"], ["--cache-dir", str(s.cache_dir)]
        env = {"OMP_NUM_THREADS": str(c.threads), "MKL_NUM_THREADS": str(c.threads)}
        started = time.monotonic()
        try:
            shutil.rmtree(staging, ignore_errors=True)
            await run_step(self.state, "fine-tuning on the feedback since the last model", self.log_path,
                           [*llm4rec, "finetune", "--model", str(s.model_dir), "--events", str(taken), "--out",
                            str(staging), "--epochs", str(c.epochs), "--seed", str(self.done), *cache],
                           env)  # fmt: skip
            await run_step(self.state, "indexing the fine-tuned model", self.log_path,
                           [*llm4rec, "index", "build", "--model", str(staging), "--location", s.index.location,
                            "--no-context", *cache], env)  # fmt: skip
        except BuildFailedError as e:
            self.pending.give_back(taken)
            log.error("fine_tune_failed", error=str(e), log=str(self.log_path))
            return False
        finally:
            self.state.serving.building = ""
        exchange(staging, s.model_dir)
        taken.unlink()
        await self.state.load_trained(replacing=True)
        self.done += 1
        await self.on_swapped()
        await self.state.serving.retired()
        refreeze()  # the replaced model and learner are garbage now
        seconds = time.monotonic() - started
        self.metrics.fine_tune_seconds.set(seconds)
        log.info("fine_tune_swapped_in", model_version=self.state.recommender.c.model_version, seconds=round(seconds))
        return True
