"""The online update rules (eq. 26-33) on a small trained model."""

from __future__ import annotations

import numpy as np
import torch

from learner.settings import OnlineSettings
from learner.trainer import EXPLICIT, IMPLICIT, Example, OnlineTrainer
from models.adapter import ServingAdapter
from tests.conftest import SmallTrained


def _trainer(st: SmallTrained, **config: float) -> OnlineTrainer:
    torch.manual_seed(0)
    adapter = ServingAdapter(st.model.config.fusion.dim, st.data.num_items, rank=4)
    return OnlineTrainer(st.model, adapter, OnlineSettings(**config).to_config())


def _romance_binge(user_history: list[int], n: int = 32) -> list[Example]:
    """A space fan (odd user) suddenly likes romances (items 20-39)."""
    rng = np.random.default_rng(0)
    return [Example(np.asarray(user_history), int(i), IMPLICIT, 1.0, 0.0) for i in rng.integers(20, 40, n)]


def _romance_rank(t: OnlineTrainer, history: list[int]) -> float:
    with torch.no_grad():
        s = t.adapter.scores(t.base_users([np.asarray(history)]), t.items, t.pop)[0]
    order = torch.argsort(s, descending=True).tolist()
    return float(np.mean([order.index(i) for i in range(20, 40)]))


def test_steps_move_the_users_ranking_towards_the_feedback(small_trained: SmallTrained) -> None:
    history = [0, 3, 5, 7, 11]
    t = _trainer(small_trained)
    before = _romance_rank(t, history)
    for _ in range(15):
        stats = t.step(_romance_binge(history))
        assert not stats.skipped
    assert _romance_rank(t, history) < before - 3
    assert 0 < stats.updated_fraction < 1  # importance selection leaves small gradients alone
    assert 0 < stats.lr <= 0.05  # uncertainty-scaled


def test_the_importance_threshold_selects_fewer_parameters(small_trained: SmallTrained) -> None:
    batch = _romance_binge([0, 3, 5])
    fractions = [
        _trainer(small_trained, importance_threshold=tau).step(batch).updated_fraction for tau in (0, 0.2, 0.6)
    ]
    assert fractions[0] == 1.0
    assert fractions[0] > fractions[1] > fractions[2] > 0


def test_ewc_holds_parameters_near_their_anchor(small_trained: SmallTrained) -> None:
    drift = {}
    for lam in (0.0, 10.0):  # lr * lambda * F < 1 keeps the pull stable
        t = _trainer(small_trained, lambda_ewc=lam)
        t.fisher = {k: torch.ones_like(v) for k, v in t.fisher.items()}  # every weight matters equally
        start = {k: p.detach().clone() for k, p in t.params.items()}
        for _ in range(10):
            t.step(_romance_binge([0, 3, 5]))
            drift[lam] = sum(float((p.detach() - start[k]).norm()) for k, p in t.params.items())
    assert drift[10.0] < 0.5 * drift[0.0]


def test_a_non_finite_batch_is_skipped_and_counted(small_trained: SmallTrained) -> None:
    t = _trainer(small_trained)
    with torch.no_grad():
        t.items[0, 0] = float("nan")
    before = {k: p.detach().clone() for k, p in t.params.items()}
    stats = t.step(_romance_binge([0, 3]))
    assert stats.skipped
    assert t.skipped == 1
    assert all(torch.equal(before[k], p) for k, p in t.params.items())


def test_noisier_feedback_groups_weigh_less(small_trained: SmallTrained) -> None:
    t = _trainer(small_trained)
    t.loss_var = {EXPLICIT: 4.0, IMPLICIT: 0.25}
    batch = [Example(np.asarray([0, 1]), 2, EXPLICIT, 1.0, 0.0), Example(np.asarray([0, 1]), 2, IMPLICIT, 1.0, 0.0)]
    w = t._reliability(batch, torch.tensor([0.0, 0.0]))
    assert float(w[1]) > float(w[0])
    assert abs(float(w.mean()) - 1.0) < 1e-6
