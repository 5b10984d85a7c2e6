"""Process-wide setup shared by the service and learner entry points."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os

M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with a worker-thread pool and torch
    the arenas fragment and resident memory grows without a Python-level leak (+43% over a 10-minute
    soak; flat with 2 arenas, RELIABILITY.md). MALLOC_ARENA_MAX in the environment wins when set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
            ctypes.CDLL(libc).mallopt(M_ARENA_MAX, arenas)


def freeze_startup_objects() -> None:
    """Move everything allocated so far (model, catalogue, caches' first fill) out of the cyclic
    collector's reach, so its full collections stop walking a heap that lives as long as the process
    (a native profile under load caught the event loop inside the collector). Call after start-up."""
    gc.collect()
    gc.freeze()


def refreeze() -> None:
    """The same after long-lived objects were replaced (a new model): the replaced ones, frozen with the
    rest, would never be collected."""
    gc.unfreeze()
    freeze_startup_objects()
