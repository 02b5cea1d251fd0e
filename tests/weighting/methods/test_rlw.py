"""RLW (random loss weighting): closed-form cases (shared properties: test_loss_common.py)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError
from mtlkit.weighting import RLW
from tests.weighting._loss_toy import through_checkpoint


def test_rlw_weights_are_reproducible_from_the_seed_and_leave_global_rng_alone() -> None:
    losses = torch.ones(4)
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    first = [RLW(seed=7).weights(losses)]
    same = RLW(seed=7)
    draws = [same.weights(losses) for _ in range(3)]
    assert torch.equal(torch.rand(3), expected_global)
    torch.testing.assert_close(draws[0], first[0], rtol=0, atol=0)
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(RLW(seed=8).weights(losses), first[0])
    for w in draws:
        assert (w > 0).all() and w.sum().item() == pytest.approx(4.0)
    # the paper's distribution: softmax of standard normal draws, times T
    g = torch.Generator().manual_seed(7)
    paper = 4 * torch.softmax(torch.randn(4, generator=g, dtype=torch.float64), dim=0)
    torch.testing.assert_close(first[0], paper.float())


def test_rlw_weights_do_not_depend_on_the_losses() -> None:
    a = RLW(seed=3).weights(torch.tensor([1.0, 2.0, 3.0]))
    b = RLW(seed=3).weights(torch.tensor([30.0, 0.2, 1e-3]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rlw_state_round_trip_restores_the_generator_exactly() -> None:
    method = RLW(seed=11)
    losses = torch.ones(3)
    for _ in range(5):
        method.weights(losses)
    state = through_checkpoint(method.state_dict())
    straight = [method.weights(losses) for _ in range(4)]
    other = RLW(seed=99)
    other.load_state_dict(state)
    resumed = [other.weights(losses) for _ in range(4)]
    for s, r in zip(straight, resumed, strict=True):
        torch.testing.assert_close(r, s, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="generator"):
        other.load_state_dict({**state, "generator": [1, 2, 3]})
