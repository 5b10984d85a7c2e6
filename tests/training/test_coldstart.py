import numpy as np
import pytest
import torch

from models.scoring import HistoryBatch
from tests.conftest import make_dataset
from training.coldstart import OnlyAmong, cold_eval_set, random_hit_rate, withhold_items
from training.evaluate import EvalContext, evaluate


def test_withheld_items_vanish_from_training_data() -> None:
    data = make_dataset([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]], 6)
    warm, cold = withhold_items(data, frac=0.5, min_count=2, seed=0)
    assert len(cold) == 2  # half of the 4 items seen at least twice (1, 2, 3, 4)
    assert not np.isin(warm.interactions.item, cold).any()
    es = cold_eval_set(data, cold)
    for r in range(len(es)):
        assert np.isin(es.targets_of(r), cold).all()
        assert not np.isin(es.history_of(r), cold).any()


def test_random_hit_rate_by_hand() -> None:
    data = make_dataset([[0, 1], [2, 3]], 10)
    es = cold_eval_set(data, np.array([1]))
    assert random_hit_rate(es, pool=10, k=3) == pytest.approx(0.3)


class Ascending:
    name = "ascending"

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        return torch.arange(10, dtype=torch.float32).expand(batch.users.shape[0], -1)


def test_only_among_ranks_within_the_pool() -> None:
    data = make_dataset([[0, 5], [1, 6]], 10)
    cold = np.array([5, 6, 7])
    es = cold_eval_set(data, cold)
    ctx = EvalContext(np.ones(10), 2)
    out = evaluate(OnlyAmong(Ascending(), cold, 10), es, ctx, ks=(1,), beyond=False)
    # within the pool {5, 6, 7} scored 5 < 6 < 7, target 5 ranks third and target 6 second
    assert out["HR@1"] == 0.0
    assert out["MRR"] == pytest.approx((1 / 3 + 1 / 2) / 2)
