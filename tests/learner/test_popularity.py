"""The streaming popularity of the eq. 15 term: decay by half-life, a clock that only moves forward."""

from __future__ import annotations

import numpy as np
import pytest

from learner.popularity import DecayedPopularity

DAY = 86_400.0


def test_counts_halve_every_half_life_and_new_events_add_one() -> None:
    pop = DecayedPopularity.from_log(np.array([0, 0, 1]), np.array([0, 0, 0]), 3, half_life_s=10 * DAY)
    np.testing.assert_allclose(pop.counts, [2, 1, 0])
    pop.add(np.array([2]), np.array([20 * DAY]))
    np.testing.assert_allclose(pop.counts, [0.5, 0.25, 1.0])
    np.testing.assert_allclose(pop.log1p(), np.log1p([0.5, 0.25, 1.0]), rtol=1e-6)


def test_a_late_event_counts_at_the_current_clock() -> None:
    """Replaying old events (a spool, a rewound partition) must not make counts grow back in time."""
    pop = DecayedPopularity(2, half_life_s=DAY)
    pop.add(np.array([0]), np.array([5 * DAY]))
    pop.add(np.array([1]), np.array([1 * DAY]))
    assert pop.t == 5 * DAY
    np.testing.assert_allclose(pop.counts, [1.0, 1.0])


def test_items_beyond_the_table_grow_it_and_shorter_reads_are_padded() -> None:
    pop = DecayedPopularity(2, half_life_s=DAY)
    pop.add(np.array([4]), np.array([0]))
    assert len(pop.counts) == 5
    assert pop.counts[4] == 1.0
    assert pop.log1p(7).shape == (7,)
    assert pop.log1p(3).tolist() == [0.0, 0.0, 0.0]


def test_a_non_positive_half_life_is_refused() -> None:
    with pytest.raises(ValueError, match="half_life_s"):
        DecayedPopularity(3, 0.0)


def test_rescaled_counts_keep_the_training_logs_scale_and_follow_recency() -> None:
    """gamma was fitted to log(1 + count) over the whole log: rescaled, the counts sum to the log's size,
    so a decayed count changes the order of items, not the scale gamma multiplies."""
    items, times = np.array([0, 0, 0, 1]), np.array([0, 0, 0, 100 * DAY])
    pop = DecayedPopularity.from_log(items, times, 2, half_life_s=10 * DAY, rescale=True)
    c = np.expm1(pop.log1p().astype(np.float64))
    assert c.sum() == pytest.approx(4.0, rel=1e-5)
    assert c[1] > c[0]  # the recent item leads although the old one has more events
