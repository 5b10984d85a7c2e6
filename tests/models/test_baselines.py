"""Each baseline learns the structure it is built for, on data where that structure is planted.

Community data (two user groups, two disjoint item halves) is what collaborative filtering exploits;
a deterministic ring of items is what only a sequential model exploits.
"""

from __future__ import annotations

import pytest
import torch

from models.baselines import BPRMF, BPRConfig, ItemKNN, LightGCN, LightGCNConfig, MostPop, SASRec, SASRecConfig
from models.data import RecDataset
from models.scoring import HistoryBatch, Scorer, Trainable, TrainData
from models.splits import Split, leave_one_out
from training.evaluate import EvalContext, evaluate
from training.fit import FitConfig, fit


def _prepare(data: RecDataset) -> tuple[Split, TrainData, EvalContext]:
    split = leave_one_out(data)
    train = TrainData(split.train, split.num_users, split.num_items)
    return split, train, EvalContext.build(data, train)


def _test_hr(model: Scorer, data: RecDataset, k: int, epochs: int = 0) -> float:
    split, train, ctx = _prepare(data)
    if epochs and isinstance(model, Trainable):
        fit(model, train, split.valid, ctx, FitConfig(max_epochs=epochs, eval_every=epochs, seed=0), progress=False)
    return evaluate(model, split.test, ctx, ks=(k,))[f"HR@{k}"]


@pytest.mark.parametrize(
    ("name", "build", "epochs"),
    [
        ("itemknn", lambda t: ItemKNN(t), 0),
        ("bprmf", lambda t: BPRMF(t.num_users, t.num_items, BPRConfig(lr=0.05, batch_size=256)), 30),
        ("lightgcn", lambda t: LightGCN(t, LightGCNConfig(lr=0.05, batch_size=256)), 30),
    ],
)
def test_collaborative_models_find_the_communities(clustered: RecDataset, name: str, build, epochs: int) -> None:  # type: ignore[no-untyped-def]
    _, train, _ = _prepare(clustered)
    popular = _test_hr(MostPop(train), clustered, 10)
    learned = _test_hr(build(train), clustered, 10, epochs)
    # the target is one of 9 unseen items of the user's own community, next to 20 of the other
    # community: a model that puts its own community first always hits in 10; chance is ~10/29
    assert learned >= 0.9, name
    assert learned > popular + 0.2, name


def test_sasrec_learns_the_next_item(cyclic: RecDataset) -> None:
    _, train, _ = _prepare(cyclic)
    model = SASRec(train.num_items, SASRecConfig(dim=32, max_len=20, lr=0.01, dropout=0.0, batch_size=32))
    hr1 = _test_hr(model, cyclic, 1, epochs=40)
    assert hr1 >= 0.9  # the ring makes the next item certain
    assert _test_hr(MostPop(train), cyclic, 1) < 0.2


def test_mostpop_ranks_by_training_count(clustered: RecDataset) -> None:
    _, train, _ = _prepare(clustered)
    scores = MostPop(train).score(HistoryBatch(torch.tensor([0]), torch.tensor([[1]])))
    assert scores[0].argmax().item() == int(train.popularity().argmax())
