"""The online update rules (eq. 26-33) on a small trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.settings import OnlineSettings
from learner.trainer import EXPLICIT, IMPLICIT, Example, OnlineTrainer, _clashes, _clipped
from models.adapter import ServingAdapter
from tests.conftest import SmallTrained


def _trainer(st: SmallTrained, **config: float) -> OnlineTrainer:
    torch.manual_seed(0)
    adapter = ServingAdapter(st.model.config.fusion.dim, st.data.num_items, rank=4, log_pop=st.model.log_pop)
    return OnlineTrainer(st.model, adapter, OnlineSettings(**config).to_config())


def _romance_binge(user_history: list[int], n: int = 32) -> list[Example]:
    """A space fan (odd user) suddenly likes romances (items 20-39)."""
    rng = np.random.default_rng(0)
    return [Example(np.asarray(user_history), int(i), IMPLICIT, 1.0, 0.0) for i in rng.integers(20, 40, n)]


def _romance_rank(t: OnlineTrainer, history: list[int]) -> float:
    with torch.no_grad():
        s = t.adapter.scores(t.base_users([np.asarray(history)]), t.items, t.gamma)[0]
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
    for lam in (0.0, 100.0, 1e8):  # the proximal step is stable however large lr * lambda * F gets
        t = _trainer(small_trained, lambda_ewc=lam, adapter_updates=True, item_updates=False, fisher_decay=1.0)
        t.fisher = {k: torch.ones_like(v) for k, v in t.fisher.items()}  # every weight matters equally
        start = {k: p.detach().clone() for k, p in t.params.items()}
        for _ in range(10):
            assert not t.step(_romance_binge([0, 3, 5])).skipped
            drift[lam] = sum(float((p.detach() - start[k]).norm()) for k, p in t.params.items())
    assert drift[100.0] < 0.5 * drift[0.0]
    assert drift[1e8] < 0.01 * drift[0.0]


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


def _rank_of(t: OnlineTrainer, history: list[int], item: int) -> int:
    with torch.no_grad():
        s = t.adapter.scores(t.base_users([np.asarray(history)]), t.items, t.gamma)[0]
    return int((s > s[item]).sum())


def test_item_updates_lift_a_clicked_item_for_users_like_its_clickers(small_trained: SmallTrained) -> None:
    """Only the item side learns here: the user map is off. Space fans click one romance (item 25);
    it rises for another space fan, and no user-side parameter moved."""
    t = _trainer(small_trained, adapter_updates=False, lambda_item=0.0)
    assert set(t.params) == {"item_delta"}
    fans = [[1, 3, 5, 7], [3, 5, 9, 11], [1, 9, 13, 15], [5, 7, 11, 17]]
    before = _rank_of(t, [1, 5, 11, 13], 25)
    for _ in range(20):
        t.step([Example(np.asarray(h), 25, IMPLICIT, 1.0, 0.0) for h in fans])
    assert _rank_of(t, [1, 5, 11, 13], 25) < before - 5
    moved = t.adapter.item_delta.detach().norm(dim=1)
    assert moved[25] == moved.max()
    assert float(t.adapter.B.detach().abs().sum()) == 0.0


def test_the_items_fisher_follows_their_training_counts_and_holds_known_items(small_trained: SmallTrained) -> None:
    """EWC anchors items to their trained vectors with the training data's Fisher: an item the training
    data saw often moves less under the same clicks than one it never saw (a small step: with a large
    one the unseen item fits its clicks at once and its gradient falls below the importance threshold)."""
    t = _trainer(small_trained, adapter_updates=False, lambda_item=1.0, item_lr=0.05)
    counts = np.zeros(small_trained.data.num_items)
    counts[25] = 10_000.0
    t.fit_fisher([_romance_binge([0, 3, 5], 16)], counts)
    f = t.fisher["item_delta"]
    assert float(f[25].sum()) > 0
    assert float(f[26].abs().sum()) == 0.0
    batch = [Example(np.asarray([1, 3, 5, 7]), i, IMPLICIT, 1.0, 0.0) for i in (25, 26) for _ in range(4)]
    for _ in range(20):
        t.step(batch)
    moved = t.adapter.item_delta.detach().norm(dim=1)
    assert moved[25] < 0.5 * moved[26]


def test_streaming_popularity_moves_the_popularity_term(small_trained: SmallTrained) -> None:
    from learner.popularity import DecayedPopularity

    t = _trainer(small_trained)
    log = small_trained.train.log
    t.popularity = DecayedPopularity.from_log(log.item, log.timestamp, small_trained.data.num_items, 30 * 86_400.0)
    snap = t.snapshot()
    before = t.adapter.log_pop.clone()
    t.observe(np.array([7] * 50), np.full(50, float(log.timestamp.max())))
    assert float(t.adapter.log_pop[7]) > float(before[7]) + 1.0
    t.restore(snap)  # all or nothing: a refused batch's counts go too
    torch.testing.assert_close(t.adapter.log_pop, before)


def test_an_overflowing_batch_does_not_break_the_reliability_weights(small_trained: SmallTrained) -> None:
    t = _trainer(small_trained)
    batch = _romance_binge([0, 3, 5], n=8)
    weights = t._reliability(batch, torch.tensor([1.0, 3e38, -3e38, 2.0, 1.0, 3e38, 0.0, 1.0]))  # variance inf
    assert torch.isfinite(weights).all()
    assert t.loss_var[IMPLICIT] == 1.0  # the non-finite variance was not folded in
    assert not t.step(batch).skipped


def test_gradients_are_bounded_as_a_whole_for_the_adapter_and_row_by_row_for_the_items() -> None:
    grads = {"A": torch.full((2, 2), 3.0), "B": torch.zeros(2, 2), "item_bias": torch.zeros(3),
             "item_delta": torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])}  # fmt: skip
    out = _clipped(grads, 1.0)
    dense = torch.cat([out[k].flatten() for k in ("A", "B", "item_bias")])
    assert float(dense.norm()) == pytest.approx(1.0)
    assert out["item_delta"].norm(dim=1).tolist() == pytest.approx([1.0, 0.5, 0.0])  # small rows untouched
    assert _clipped(grads, 0.0) is grads


def test_a_sampled_softmax_masks_exactly_the_accidental_hits() -> None:
    """Every place a row's own target comes back (another row's target, a negative), and nowhere else:
    the same mask as comparing every row's target with every candidate."""
    g = torch.Generator().manual_seed(0)
    rows = 64
    cand = torch.cat([torch.randint(40, (rows,), generator=g), torch.randint(40, (200,), generator=g)])
    _, col, counts = torch.unique(cand, return_inverse=True, return_counts=True)
    dense = cand.unsqueeze(0) == cand[:rows].unsqueeze(1)
    dense.fill_diagonal_(False)
    sparse = torch.zeros_like(dense)
    sparse[_clashes(col, rows, counts)] = True
    assert dense.any()  # the draw has accidental hits to find
    assert torch.equal(sparse, dense)
