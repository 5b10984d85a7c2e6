"""First start without a model: the service already answers from its cold-start bundle while this
trains LLM4Rec and indexes it in child processes (so training never holds the service's GIL), then
swaps the trained model in, first without RAG context and again once the context collection is built.

The checkpoint is written to a staging folder and moved into place only after its item index is
published: a start interrupted at any point finds either no model (and starts over) or a complete one.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from learner.fine_tune import BuildFailedError, run_child
from service.state import ServiceState

log = structlog.get_logger()


async def train_and_swap(state: ServiceState, time_budget_s: float, log_path: Path,
                         on_trained: Callable[[], Awaitable[object]] | None = None) -> None:  # fmt: skip
    """Train, index, swap in; then build the RAG context and swap again. Child output goes to
    `log_path`; a failed step is logged and leaves the cold-start (or context-free) model serving."""
    s = state.settings
    staging = s.model_dir.with_name(s.model_dir.name + ".partial")
    llm4rec = [sys.executable, "-m", "llm4rec"]
    cache, location = ["--cache-dir", str(s.cache_dir)], ["--location", s.index.location]
    state.serving.building = "embedding item content"
    # training embeds the same item texts: after the service has, it reads them from the shared cache
    await state.serving.embedded.wait()
    try:
        shutil.rmtree(staging, ignore_errors=True)
        await run_step(state, "training", log_path, [*llm4rec, "train", "--out", str(staging), "--dataset",
                    s.cold_start.dataset, "--time-budget", str(time_budget_s), *cache])  # fmt: skip
        await run_step(
            state,
            "indexing items",
            log_path,
            [*llm4rec, "index", "build", "--model", str(staging), *location, "--no-context", *cache],
        )
        staging.replace(s.model_dir)
        await state.load_trained(context=False)
        if on_trained is not None:
            await on_trained()
        if s.rag.enabled:
            await run_step(
                state,
                "embedding RAG context",
                log_path,
                [*llm4rec, "index", "build", "--model", str(s.model_dir), *location, "--no-items", *cache],
            )
            await state.add_context()
        state.serving.building = ""
        log.info("background_build_finished", model_version=state.recommender.c.model_version)
    except BuildFailedError as e:
        state.serving.building = f"failed: {e}; see {log_path}"
        log.error("background_build_failed", error=str(e), log=str(log_path))
    except Exception as e:  # loading what was built failed: what serves now keeps serving
        state.serving.building = f"failed: {e}"
        log.exception("background_swap_failed")


async def run_step(state: ServiceState, what: str, log_path: Path, command: Sequence[str]) -> None:
    """`learner.fine_tune.run_child`, with `what` shown on /readyz meanwhile."""
    state.serving.building = what
    await run_child(what, log_path, command)
