"""The training loop's validation hook, and the property bench/stopping.py replays rules on: how often a
run validates does not change what it trains."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch

from models.baselines import SASRec, SASRecConfig
from models.data import RecDataset
from models.scoring import TrainData
from models.splits import leave_one_out
from training.evaluate import EvalContext
from training.fit import FitConfig, FitResult, fit, seed_everything


def _fit(data: RecDataset, config: FitConfig, on_validation: Callable[[SASRec, int, float], None]) -> FitResult:
    """A small SASRec fitted on `data`; the hook also gets the model, to look at the weights validated."""
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    seed_everything(0)
    model = SASRec(train.num_items, SASRecConfig(dim=16, layers=1, max_len=10, batch_size=8))
    hook = functools.partial(on_validation, model)
    return fit(model, train, split.valid, EvalContext.build(data, train), config, progress=False, on_validation=hook)


def _validations(
    data: RecDataset, every: int, patience: int = 100, epochs: int = 6
) -> tuple[list[tuple[int, float]], int]:
    seen: list[tuple[int, float]] = []
    config = FitConfig(max_epochs=epochs, eval_every=every, patience=patience, seed=0)
    result = _fit(data, config, lambda _, e, v: seen.append((e, v)))
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


def test_validation_sees_the_weight_average_while_training_follows_the_raw_weights(cyclic: RecDataset) -> None:
    def states(average: float) -> list[dict[str, torch.Tensor]]:
        seen: list[dict[str, torch.Tensor]] = []
        config = FitConfig(max_epochs=3, eval_every=1, patience=10, seed=0, weight_average=average)
        _fit(cyclic, config, lambda model, e, v: seen.append(copy.deepcopy(model.state_dict())))
        return seen

    raw, averaged = states(0.0), states(0.75)
    for epoch in range(3):
        for k, v in averaged[epoch].items():
            # the average of the raw run's weights: averaging changed nothing in how the weights trained
            torch.testing.assert_close(v, _average(raw[: epoch + 1], k))
    assert not torch.equal(averaged[2]["item_emb.weight"], raw[2]["item_emb.weight"])


def _average(states: list[dict[str, torch.Tensor]], k: str, decay: float = 0.75) -> torch.Tensor:
    """The moving average after `states`, started from the first."""
    avg = states[0][k].clone()
    for s in states[1:]:
        avg = decay * avg + (1 - decay) * s[k]
    return avg
