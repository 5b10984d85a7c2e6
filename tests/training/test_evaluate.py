import numpy as np
import pytest
import torch

from models.scoring import HistoryBatch, TrainData
from models.splits import leave_one_out
from tests.conftest import make_dataset
from training.evaluate import EvalContext, evaluate, sample_negatives


class FixedScores:
    """Scores from a fixed (N,) vector, the same for every user."""

    name = "fixed"

    def __init__(self, scores: list[float]) -> None:
        self.scores = torch.tensor(scores)

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        return self.scores.expand(batch.users.shape[0], -1)


class Oracle:
    name = "oracle"

    def __init__(self, targets: dict[int, int], n: int) -> None:
        self.targets, self.n = targets, n

    def score(self, batch: HistoryBatch) -> torch.Tensor:
        out = torch.zeros(batch.users.shape[0], self.n)
        for row, u in enumerate(batch.users.tolist()):
            out[row, self.targets[u]] = 1.0
        return out


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    data = make_dataset([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]], 12)
    split = leave_one_out(data)
    ctx = EvalContext.build(data, TrainData(split.train, split.num_users, split.num_items))
    return data, split, ctx


def test_oracle_is_perfect(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, ctx = setup
    oracle = Oracle({int(u): int(split.test.targets_of(i)[0]) for i, u in enumerate(split.test.users)}, 12)
    for protocol in ("full", "sampled-uniform", "sampled-pop"):
        out = evaluate(oracle, split.test, ctx, protocol=protocol)
        assert out["HR@5"] == 1.0
        assert out["NDCG@10"] == 1.0
        assert out["MRR"] == 1.0


def test_ties_count_against_the_model(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, ctx = setup
    out = evaluate(FixedScores([0.0] * 12), split.test, ctx)
    # 12 items, 3 history items masked: the target ties with 8 others and ranks last (rank 8)
    assert out["HR@5"] == 0.0
    assert out["MRR"] == pytest.approx(1 / 9)


def test_history_is_masked_but_not_the_target(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, ctx = setup
    # user 0: history [0, 1, 2], target 3. Favour history items, then the target.
    scores = [10.0, 9.0, 8.0, 7.0] + [0.0] * 8
    out = evaluate(FixedScores(scores), split.test, ctx, ks=(1,))
    row = int(np.flatnonzero(split.test.users == 0)[0])
    assert split.test.targets_of(row).tolist() == [3]
    # user 0 hits once 0, 1, 2 are masked; user 2 (history 8, 9, 0; target 1) hits too; user 1 misses
    assert out["HR@1"] == pytest.approx(2 / 3)


def test_beyond_accuracy_and_fairness_present(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, ctx = setup
    out = evaluate(FixedScores(list(range(12))), split.test, ctx)
    for key in ("ILD@10", "Coverage@100", "Novelty@10", "ARP@10", "LongTail@10"):
        assert key in out
    assert 0.0 < out["Coverage@100"] <= 1.0


def test_sampled_negatives_are_unseen_distinct_and_reproducible() -> None:
    big = make_dataset([list(range(i, i + 20)) for i in range(5)], 300)
    split = leave_one_out(big)
    pop = np.bincount(split.train.item, minlength=300).astype(float) + 1
    negs = sample_negatives(split.test, pop, "sampled-uniform", seed=3)
    assert negs.shape == (5, 99)
    for r in range(5):
        assert len(set(negs[r].tolist())) == 99
        assert not np.isin(negs[r], split.test.history_of(r)).any()
        assert not np.isin(negs[r], split.test.targets_of(r)).any()
    assert (negs == sample_negatives(split.test, pop, "sampled-uniform", seed=3)).all()
    pop_negs = sample_negatives(split.test, pop, "sampled-pop", seed=3)
    assert pop_negs.shape == (5, 99)


def test_unknown_protocol_is_rejected(setup) -> None:  # type: ignore[no-untyped-def]
    _, split, ctx = setup
    with pytest.raises(ValueError, match="protocol"):
        evaluate(FixedScores([0.0] * 12), split.test, ctx, protocol="sampled")
