"""Per-caller token buckets for the write endpoints: `rate` requests per second sustained, `burst` at
once. A refused request gets 429 with Retry-After (seconds until a token is back)."""

from __future__ import annotations

import math
import time

from cachetools import LRUCache


class TokenBuckets:
    def __init__(self, rate: float, burst: int, max_callers: int = 100_000) -> None:
        self.rate, self.burst, self.max_callers = rate, burst, max_callers
        # caller -> (tokens, last time); beyond max_callers the longest-idle caller's bucket goes (it would
        # be full again by now anyway)
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=max_callers)

    def take(self, caller: str, now: float | None = None) -> float:
        """0 if allowed (a token is spent), else the seconds to wait."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[caller] = (tokens - 1 if wait == 0 else tokens, now)
        return wait


def retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))
