"""Each metric against a case worked out by hand."""

import math

import numpy as np
import pytest

from models import metrics


def test_hit_rate_recall_single_and_multi_target() -> None:
    ranks = [np.array([0]), np.array([12]), np.array([3, 40])]
    assert metrics.hit_rate(ranks, 10).tolist() == [1.0, 0.0, 1.0]
    assert metrics.recall(ranks, 10).tolist() == [1.0, 0.0, 0.5]


def test_ndcg_by_hand() -> None:
    # one target at rank 2 (0-based): 1/log2(4) = 0.5; ideal is rank 0 -> 1
    assert metrics.ndcg([np.array([2])], 10)[0] == pytest.approx(0.5)
    # two targets at ranks 0 and 2: DCG = 1 + 0.5, IDCG = 1 + 1/log2(3)
    assert metrics.ndcg([np.array([0, 2])], 10)[0] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert metrics.ndcg([np.array([10])], 10)[0] == 0.0


def test_mrr_uses_first_target() -> None:
    assert metrics.mrr([np.array([3, 1]), np.array([0])]).tolist() == [0.5, 1.0]


def test_intra_list_diversity() -> None:
    features = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    # pairs (0,1) identical, (0,2) and (1,2) orthogonal: mean distance 2/3
    assert metrics.intra_list_diversity(np.array([[0, 1, 2]]), features) == pytest.approx(2 / 3)
    assert metrics.intra_list_diversity(np.array([[0, 1]]), features) == pytest.approx(0.0)


def test_coverage_novelty_popularity() -> None:
    lists = np.array([[0, 1], [0, 2]])
    popularity = np.array([7.0, 3.0, 1.0, 0.0])
    assert metrics.coverage(lists, 4) == 0.75
    assert metrics.average_popularity(lists, popularity) == pytest.approx((7 + 3 + 7 + 1) / 4)
    # 7 users; smoothed p = (pop + 1) / 8
    expected = np.mean([-math.log2(8 / 8), -math.log2(4 / 8), -math.log2(8 / 8), -math.log2(2 / 8)])
    assert metrics.novelty(lists, popularity, num_users=7) == pytest.approx(expected)


def test_long_tail_share() -> None:
    popularity = np.arange(10, 0, -1, dtype=float)  # items 0, 1 are the top 20%
    assert metrics.head_items(popularity).nonzero()[0].tolist() == [0, 1]
    assert metrics.long_tail_share(np.array([[0, 5], [1, 9]]), popularity) == 0.5


def test_group_gap_ignores_unknown() -> None:
    values = np.array([1.0, 0.0, 0.5, 0.5, 9.0])
    groups = np.array([0, 0, 1, 1, -1])
    assert metrics.group_gap(values, groups) == 0.0
    assert metrics.group_gap(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0, 0, 1, 1])) == 1.0


def test_exposure_gap() -> None:
    same = np.array([[0, 1], [0, 1]])
    assert metrics.exposure_gap(same, np.array([0, 1]), 4) == 0.0
    disjoint = np.array([[0, 1], [2, 3]])
    assert metrics.exposure_gap(disjoint, np.array([0, 1]), 4) == pytest.approx(1.0)
    # group 0 exposes item 0 with weight 1 and item 1 with 1/log2(3); group 1 the reverse
    w = 1 / math.log2(3)
    swapped = np.array([[0, 1], [1, 0]])
    assert metrics.exposure_gap(swapped, np.array([0, 1]), 2) == pytest.approx((1 - w) / (1 + w))


def test_group_gap_se_matches_two_sample_formula() -> None:
    rng = np.random.default_rng(0)
    values = rng.random(300)
    groups = np.repeat([0, 1, -1], 100)
    a, b = values[:100], values[100:200]
    expected = np.sqrt(a.var(ddof=1) / 100 + b.var(ddof=1) / 100)
    assert metrics.group_gap_se(values, groups) == pytest.approx(expected)
    assert metrics.group_gap_se(values, np.zeros(300, dtype=int)) == 0.0  # one group: no gap to estimate
