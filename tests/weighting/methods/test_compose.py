"""Composition of a loss weighting with a gradient aggregation (Auto-Lambda style)."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError, RegistryError
from mtlkit.weighting import WEIGHTINGS, get
from mtlkit.weighting.compose import Composed, build, compose
from mtlkit.weighting.gradient import task_jacobian
from tests.weighting._models import NormalisedSum, as_dict, mlp_model, shared_grad, task_losses

pytest.importorskip("mtlkit.weighting.uw")


def test_uw_then_gradient_method() -> None:
    """Model gets the aggregator's update of w_i·L_i; UW's log-variances get their own gradient."""
    model, x = mlp_model()
    method = compose("uw", NormalisedSum())
    uw = method.weighting
    uw.bind(model.task_names)
    with torch.no_grad():
        uw.parameters()[0].copy_(torch.tensor([0.3, -0.2, 0.1]))
    losses, _ = task_losses(model, x)
    s = uw.parameters()[0].detach().double()
    w = 0.5 * torch.exp(-s)
    weighted_jac = w.unsqueeze(1) * task_jacobian(losses, model.shared_parameters())
    alpha = 1.0 / weighted_jac.norm(dim=1)
    record = method.backward(as_dict(model, losses), model)
    torch.testing.assert_close(shared_grad(model), alpha @ weighted_jac)
    # d/ds_i of ½(e^{-s_i} L_i + s_i) = ½(1 − e^{-s_i} L_i)
    want = 0.5 * (1 - torch.exp(-s) * losses.detach())
    torch.testing.assert_close(uw.parameters()[0].grad.double(), want.to(torch.float64))
    got = torch.tensor([record.weights[t] for t in model.task_names], dtype=torch.float64)
    torch.testing.assert_close(got, w * alpha)
    assert record.extra["loss_weight/t0"] == pytest.approx(float(w[0]))
    assert record.norms is not None


def test_composed_is_registered_and_validates_names() -> None:
    assert "compose" in WEIGHTINGS
    with pytest.raises(RegistryError, match=r"unknown weighting method 'nope'; available: .*ew"):
        build("nope", "pcgrad")
    with pytest.raises(RegistryError, match="unknown weighting method 'nope'"):
        get("compose", weighting="ew", aggregator={"name": "nope"})
    with pytest.raises(ConfigError, match="'aggregator' must be a gradient-based method"):
        build("uw", "ew")
    with pytest.raises(ConfigError, match="'weighting' is the gradient-based method"):
        build(NormalisedSum(), "ew")
    with pytest.raises(ConfigError, match="needs a 'name'"):
        build("ew", {"jacobian": "shared"})
    assert repr(build("ew")) == "EW()"
    composed = build({"name": "static", "weights": {"t0": 2.0}}, NormalisedSum(update_every=2))
    assert isinstance(composed, Composed) and composed.stateful
    assert str(composed) == "Static+NormalisedSum"


def test_composed_state_round_trip() -> None:
    model, x = mlp_model()
    a = compose("uw", NormalisedSum(update_every=2))
    losses, _ = task_losses(model, x)
    a.backward(as_dict(model, losses), model)
    b = compose("uw", NormalisedSum(update_every=2))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.weighting.parameters()[0], a.weighting.parameters()[0])
    assert b.aggregator.state_dict() == a.aggregator.state_dict()
