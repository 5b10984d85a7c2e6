"""The training loop's validation hook, and the property bench/stopping.py replays rules on: how often a
run validates does not change what it trains."""

from __future__ import annotations

from models.baselines import SASRec, SASRecConfig
from models.data import RecDataset
from models.scoring import TrainData
from models.splits import leave_one_out
from training.evaluate import EvalContext
from training.fit import FitConfig, fit, seed_everything


def _validations(
    data: RecDataset, every: int, patience: int = 100, epochs: int = 6
) -> tuple[list[tuple[int, float]], int]:
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(data, train)
    seed_everything(0)
    model = SASRec(train.num_items, SASRecConfig(dim=16, layers=1, max_len=10, batch_size=8))
    seen: list[tuple[int, float]] = []
    config = FitConfig(max_epochs=epochs, eval_every=every, patience=patience, seed=0)
    result = fit(model, train, split.valid, ctx, config, progress=False, on_validation=lambda e, v: seen.append((e, v)))
    assert seen == [(epoch, ndcg) for epoch, _, ndcg in result.curve]
    return seen, result.epochs


def test_validating_more_often_changes_nothing_a_rarer_schedule_sees(cyclic: RecDataset) -> None:
    every_epoch, _ = _validations(cyclic, every=1)
    every_third, _ = _validations(cyclic, every=3)
    assert [e for e, _ in every_epoch] == [1, 2, 3, 4, 5, 6]
    assert every_third == [every_epoch[2], every_epoch[5]]  # same trajectory, validated less often
    assert len({v for _, v in every_epoch}) > 1  # the model changed between validations


def test_the_hook_sees_the_validation_that_stops_the_run(cyclic: RecDataset) -> None:
    seen, epochs = _validations(cyclic, every=1, patience=1, epochs=60)
    assert epochs < 60  # stopped by the rule, not by max_epochs
    assert seen[-1][0] == epochs
