"""The LLM4Rec model's parts: fusion, debiasing terms, sampled softmax, and learning end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.debias import FairnessAdversary, ipw_weights, propensities, reverse_gradient
from models.fusion import CrossModalAttention, FusionConfig, ItemFusion, ItemInputs
from models.llm4rec import LLM4Rec, LLM4RecConfig
from models.scoring import PAD, HistoryBatch, TrainData
from models.splits import leave_one_out
from models.transformer import CausalTransformer
from tests.conftest import make_dataset
from training.evaluate import EvalContext, evaluate
from training.fit import FitConfig, fit


def _inputs(n: int, known: torch.Tensor | None = None) -> ItemInputs:
    g = torch.Generator().manual_seed(0)
    genres = torch.arange(n) % 3
    return ItemInputs(
        text=torch.randn(n, 8, generator=g),
        categorical=((genres, torch.arange(n)),),
        numerical=torch.randn(n, 2, generator=g),
        id_known=torch.ones(n, dtype=torch.bool) if known is None else known,
    )


def _fusion_config(n: int, **kw: object) -> FusionConfig:
    return FusionConfig(dim=16, text_dim=8, categorical_sizes=(3,), num_numerical=2, num_items=n, **kw)  # type: ignore[arg-type]


def test_fusion_shapes_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    fusion = ItemFusion(_fusion_config(10)).eval()
    vectors, alpha = fusion(_inputs(10))
    assert vectors.shape == (10, 16)
    assert alpha.shape == (10, 4)
    torch.testing.assert_close(alpha.sum(1), torch.ones(10))
    assert fusion.config.modalities == ("text", "categorical", "numerical", "id")


def test_unknown_items_get_content_only_vectors() -> None:
    torch.manual_seed(0)
    fusion = ItemFusion(_fusion_config(10)).eval()
    known = torch.tensor([True] * 8 + [False] * 2)
    vectors, alpha = fusion(_inputs(10, known))
    assert (alpha[8:, 3] == 0).all()  # no weight on the missing id token
    assert (alpha[:8, 3] > 0).all()
    # a new item's vector does not depend on whatever sits in its (untrained) id row
    with torch.no_grad():
        fusion.encoders.id.weight[8:] += 100.0  # type: ignore[union-attr]
    again, _ = fusion(_inputs(10, known))
    torch.testing.assert_close(again[8:], vectors[8:])
    assert torch.isfinite(again).all()


def test_a_config_written_before_a_field_existed_keeps_the_old_behaviour() -> None:
    saved = LLM4RecConfig(fusion=_fusion_config(10)).to_dict()
    del saved["layout"]
    assert LLM4RecConfig.from_dict(saved).layout == "pre-norm"
    assert LLM4RecConfig.from_dict(LLM4RecConfig(fusion=_fusion_config(10)).to_dict()) == LLM4RecConfig(
        fusion=_fusion_config(10)
    )


def test_cross_attention_reads_only_other_present_modalities() -> None:
    torch.manual_seed(0)
    cross = CrossModalAttention(3, 8)
    h = torch.randn(5, 3, 8)
    everything = torch.ones(5, 3, dtype=torch.bool)
    out = cross(h, everything)
    perturbed = h.clone()
    perturbed[:, 2] += torch.randn(5, 8)  # not a constant shift: the layer norm would remove that
    # modality 0 attends to modality 2, so changing 2 changes 0's output ...
    assert not torch.allclose(cross(perturbed, everything)[:, 0], out[:, 0])
    # ... unless 2 is absent; and a modality with nobody else present is left as it was (no self-attention)
    without_2 = everything.clone()
    without_2[:, 2] = False
    torch.testing.assert_close(cross(perturbed, without_2)[:, 0], cross(h, without_2)[:, 0])
    alone = torch.tensor([[True, False, False]]).expand(5, 3)
    torch.testing.assert_close(cross(h, alone)[:, 0], h[:, 0])
    assert ItemFusion(_fusion_config(6, cross_attention=False)).cross is None


def test_ipw_weights_clip_and_self_normalise() -> None:
    p_item, p_user = propensities(torch.tensor([100.0, 10.0, 1.0]), torch.tensor([5.0, 5.0]), 0.5, 0.0)
    torch.testing.assert_close(p_item, torch.tensor([1.0, 0.1**0.5, 0.01**0.5]))
    torch.testing.assert_close(p_user, torch.ones(2))
    w = ipw_weights(p_item, clip=5.0)  # raw 1, 3.16, 10 -> clipped 10 -> 5
    assert w.mean().item() == pytest.approx(1.0)
    raw = torch.tensor([1.0, 10**0.5, 5.0])
    torch.testing.assert_close(w, raw * 3 / raw.sum())


def test_gradient_reversal_flips_and_scales() -> None:
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -0.5))


def test_adversary_ignores_unknown_groups() -> None:
    adv = FairnessAdversary(4, 2)
    users = torch.randn(3, 4, requires_grad=True)
    loss = adv.loss(users, torch.tensor([-1, -1, -1]), 1.0)
    assert loss.item() == 0.0
    assert adv.loss(users, torch.tensor([0, 1, -1]), 1.0).item() > 0


def _model(n: int, cfg: LLM4RecConfig, pop: torch.Tensor | None = None) -> LLM4Rec:
    torch.manual_seed(0)
    pop = torch.arange(1, n + 1).float() if pop is None else pop
    return LLM4Rec(cfg, _inputs(n), pop, torch.ones(4))


def test_sampled_softmax_tracks_the_full_softmax() -> None:
    """With logQ correction and many samples, the sampled loss estimates the full one."""
    n = 200
    full = _model(n, LLM4RecConfig(fusion=_fusion_config(n), pop_deconfound=False))
    h = torch.randn(32, 16) * 0.3
    targets = torch.randint(0, n, (32,))
    items, _ = full.fusion(full.items)
    exact = full._cross_entropy(h, items, targets).mean()
    sampled_cfg = LLM4RecConfig(
        fusion=_fusion_config(n), pop_deconfound=False, full_softmax_max_items=10, num_negatives=20000
    )
    sampled = _model(n, sampled_cfg)
    sampled.load_state_dict(full.state_dict())
    approx = sampled._cross_entropy(h, items, targets).mean()
    assert approx.item() == pytest.approx(exact.item(), rel=0.05)


def test_serving_gamma_is_the_do_intervention() -> None:
    n = 12
    model = _model(n, LLM4RecConfig(fusion=_fusion_config(n)))
    with torch.no_grad():
        model.gamma.fill_(2.0)
    batch = HistoryBatch(torch.tensor([0]), torch.tensor([[1, 2, 3]]))
    model.serve_gamma = 0.0
    deconfounded = model.score(batch)
    model.serve_gamma = None  # the learned gamma
    confounded = model.score(batch)
    torch.testing.assert_close(confounded - deconfounded, (2.0 * model.log_pop).expand(1, -1))


def test_llm4rec_learns_the_next_item(cyclic) -> None:  # type: ignore[no-untyped-def]
    split = leave_one_out(cyclic)
    train = TrainData(split.train, split.num_users, split.num_items)
    ctx = EvalContext.build(cyclic, train)
    n = cyclic.num_items
    items = ItemInputs(None, ((torch.arange(n) % 3, torch.arange(n)),), None, torch.from_numpy(train.popularity() > 0))
    fusion = FusionConfig(dim=32, categorical_sizes=(3,), num_items=n, id_dropout=0.0)
    # 0.01 is too fast for the SASRec block (it reaches HR@1 0.56 there; 1.0 at 0.003)
    cfg = LLM4RecConfig(fusion=fusion, max_len=20, lr=0.003, dropout=0.0, batch_size=32)
    torch.manual_seed(0)
    model = LLM4Rec(cfg, items, torch.from_numpy(train.popularity()), torch.ones(cyclic.num_users))
    fit(model, train, split.valid, ctx, FitConfig(max_epochs=40, eval_every=40, seed=0), progress=False)
    assert evaluate(model, split.test, ctx, ks=(1,))["HR@1"] >= 0.9


def test_windows_use_the_whole_history() -> None:
    from models.sequences import training_windows, window_batches

    windows = training_windows({7: np.arange(25)}, max_len=10)
    assert [len(w) for _, w in windows] == [11, 11, 5]
    assert sorted(np.concatenate([w[1:] for _, w in windows]).tolist()) == list(range(1, 25))
    users, inp, tgt = next(window_batches(windows[:1], 4, np.random.default_rng(0)))
    assert users.tolist() == [7]
    assert (tgt[0, :-1] == inp[0, 1:]).all()
    data = make_dataset([[0, 1, 2]], 3)
    assert len(data.interactions) == 3


def test_batches_are_random_samples_of_windows_unless_length_buckets() -> None:
    from models.sequences import window_batches

    windows = [(u, np.arange(3 if u % 2 else 30)) for u in range(64)]  # short and long, alternating
    rng = np.random.default_rng(0)
    mixed = [len(set((inp != PAD).sum(1).tolist())) > 1 for _, inp, _ in window_batches(windows, 8, rng)]
    bucketed = [len(set((inp != PAD).sum(1).tolist())) > 1 for _, inp, _ in window_batches(windows, 8, rng, True)]
    assert sum(mixed) >= 6
    assert not any(bucketed)
    seen = np.concatenate([u.numpy() for u, _, _ in window_batches(windows, 8, rng)])
    assert sorted(seen.tolist()) == list(range(64))  # every window once per epoch


def test_group_loss_gap_is_the_spread_of_group_means_and_differentiable() -> None:
    from models.debias import group_loss_gap

    losses = torch.tensor([1.0, 2.0, 3.0, 6.0], requires_grad=True)
    gap = group_loss_gap(losses, torch.tensor([0, 0, 1, -1]))  # unknown group ignored
    torch.testing.assert_close(gap, torch.tensor(1.5))
    gap.backward()
    assert losses.grad is not None
    torch.testing.assert_close(losses.grad, torch.tensor([-0.5, -0.5, 1.0, 0.0]))
    assert group_loss_gap(losses, torch.tensor([1, 1, 1, -1])).item() == 0.0  # one group: nothing to equalise


@pytest.mark.parametrize("layout", ["sasrec", "pre-norm"])
def test_the_newest_state_alone_equals_the_full_encodings_last_row(layout: str) -> None:
    torch.manual_seed(0)
    net = CausalTransformer(16, layers=2, heads=2, dropout=0.2, layout=layout).eval()
    x = torch.randn(5, 7, 16)
    valid = torch.ones(5, 7, dtype=torch.bool)
    valid[0, :4] = False  # a short history, left-padded
    valid[1, :6] = False
    full = net(x, valid)
    last = net(x, valid, last=True)
    assert last.shape == (5, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["sasrec", "pre-norm"])
def test_serving_encodes_users_as_training_does_and_follows_the_weights(layout: str) -> None:
    """Inference encodes from precomputed input rows (the first block's keys and values as an item's
    part plus a position's, no padding zeroed): the same user vectors as the training code's path, for
    full and left-padded histories, and still after the encoder's weights move."""
    n = 60
    model = _model(n, LLM4RecConfig(fusion=_fusion_config(n), max_len=8, layout=layout)).eval()
    histories = torch.randint(0, n, (6, 8))
    histories[0, :5] = PAD  # short histories, left-padded
    histories[1, :7] = PAD

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            served = model.user_vectors(histories)
        with torch.enable_grad():  # the training code's path (no precomputed rows)
            reference = model.user_vectors(histories).detach()
        return served, reference

    torch.testing.assert_close(*both(), rtol=1e-5, atol=1e-5)
    before = both()[0]
    with torch.no_grad():  # an optimizer's in-place step on the first block and the positions
        for p in (*model.encoder.blocks[0].parameters(), model.pos_emb.weight):
            p.add_(0.1 * torch.randn_like(p))
    served, reference = both()
    torch.testing.assert_close(served, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(served, before)
