"""Streaming popularity for the eq. 15 term: a time-decayed interaction count per item.

Every positive event adds 1 to its item; every count halves each `half_life_s` seconds of event time.
The training log seeds the counts (decayed to its last timestamp), so the first version the learner
publishes already ranks by recent rather than all-time popularity. Event time only moves forward: a late
event counts at the clock's current time, so replaying a spool or a Kafka partition out of order cannot
make counts grow back.

The model's gamma was fitted to log(1 + count) over the whole training log; decayed counts are smaller
by a factor that grows with the half-life's shortness, and gamma * log(1 + count) would then change
scale as well as order. `total` rescales what `log1p` reports to sum to the training log's size, so
only the order among items follows recency.
"""

from __future__ import annotations

import numpy as np


class DecayedPopularity:
    def __init__(self, num_items: int, half_life_s: float, total: float | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.half_life_s, self.total = half_life_s, total
        self.counts = np.zeros(num_items, np.float64)
        self.t: float | None = None  # event time the counts are decayed to

    @classmethod
    def from_log(cls, items: np.ndarray, timestamps: np.ndarray, num_items: int, half_life_s: float,
                 rescale: bool = False) -> DecayedPopularity:  # fmt: skip
        """`rescale`: report counts on the log's own scale (`total` = its number of events)."""
        pop = cls(num_items, half_life_s, float(len(items)) if rescale else None)
        pop.add(items, timestamps)
        return pop

    def add(self, items: np.ndarray, timestamps: np.ndarray) -> None:
        """Count one event per (item, timestamp); ids beyond the table grow it (items added later)."""
        items = np.asarray(items, np.int64)
        if len(items) == 0:
            return
        times = np.asarray(timestamps, np.float64)
        if self.t is not None:
            times = np.maximum(times, self.t)
        now = float(times.max())
        if self.t is not None:
            self.counts *= self._decay(now - self.t)
        if items.max() >= len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(items.max() + 1 - len(self.counts))])
        np.add.at(self.counts, items, self._decay(now - times))
        self.t = now

    def log1p(self, n: int | None = None) -> np.ndarray:
        """(n,) float32 log(1 + count): the popularity coordinate the model's gamma multiplies."""
        c = self.counts if n is None else np.pad(self.counts[:n], (0, max(0, n - len(self.counts))))
        if self.total is not None and self.counts.sum() > 0:
            c = c * (self.total / self.counts.sum())
        return np.log1p(c).astype(np.float32)

    def _decay(self, dt: np.ndarray | float) -> np.ndarray:
        return np.exp2(-np.asarray(dt, np.float64) / self.half_life_s)
