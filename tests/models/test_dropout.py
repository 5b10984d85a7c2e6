"""The cheaper dropout mask: the rate asked for, an unbiased output, identity outside training, and
gradients only through the kept elements."""

from __future__ import annotations

import torch

from models.dropout import Dropout, dropout


def test_drops_the_asked_fraction_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    for p in (0.1, 0.2, 0.5):
        y = dropout(x, p)
        assert abs(float((y == 0).float().mean()) - p) < 0.005
        assert abs(float(y.mean()) - 1.0) < 0.01  # inverted scaling: the expectation is unchanged


def test_both_halves_of_each_draw_are_used_uniformly() -> None:
    torch.manual_seed(1)
    dropped = dropout(torch.ones(200_000), 0.2) == 0
    even, odd = dropped[0::2].float().mean(), dropped[1::2].float().mean()
    assert abs(float(even) - 0.2) < 0.01 and abs(float(odd) - 0.2) < 0.01


def test_identity_outside_training_or_at_zero() -> None:
    x = torch.randn(3, 5)
    layer = Dropout(0.5).eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(dropout(x, 0.0), x)


def test_gradient_flows_through_kept_elements_only() -> None:
    torch.manual_seed(2)
    x = torch.randn(1000, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    assert x.grad is not None
    kept = y.detach() != 0
    assert torch.all(x.grad[~kept] == 0)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], float(x.grad[kept][0])))


def test_seeded_draws_repeat() -> None:
    torch.manual_seed(3)
    a = dropout(torch.ones(100), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(torch.ones(100), 0.5))
