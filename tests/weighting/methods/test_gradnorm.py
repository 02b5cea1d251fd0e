"""GradNorm (Chen et al. 2018): learned task weights that balance gradient norms."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting import GradNorm
from tests.weighting.projection_helpers import losses_of, tiny_model
from tests.weighting.samplers import random_jacobian


def distance_to_targets(weights: torch.Tensor, norms: torch.Tensor, rates: torch.Tensor) -> float:
    """Σ_i |w_i n_i / mean(w n) − r_i^α|: scale-free, so renormalisation cannot change it."""
    normalised = weights * norms / (weights * norms).mean()
    return float((normalised - rates).abs().sum())


def test_weights_keep_sum_t_and_stay_positive() -> None:
    method = GradNorm(lr=0.5)
    g = torch.Generator().manual_seed(0)
    for step in range(20):
        method.observe_losses(torch.rand(5, generator=g, dtype=torch.float64) + 0.1)
        method.aggregate(random_jacobian(5, 8, seed=step) * torch.arange(1, 6)[:, None])
        weights = method.task_weights
        assert weights.sum().item() == pytest.approx(5.0)
        assert (weights > 0).all()


def test_first_step_uses_unit_weights() -> None:
    jac = random_jacobian(3, 6, seed=1)
    method = GradNorm()
    method.observe_losses(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(method.aggregate(jac), jac.sum(dim=0))


def test_two_task_closed_form() -> None:
    """n = (1, 3), equal rates: targets (2, 2), ∂L_grad/∂w = (−1, 3)."""
    jac = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    method = GradNorm(lr=0.1)
    method.observe_losses(torch.tensor([2.0, 2.0]))
    method.aggregate(jac)
    stepped = torch.tensor([1.1, 0.7], dtype=torch.float64)
    torch.testing.assert_close(method.task_weights, 2 * stepped / stepped.sum())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_update_moves_normalised_norms_toward_targets(seed: int, alpha: float) -> None:
    t = 4
    jac = (
        random_jacobian(t, 10, seed=seed)
        * torch.linspace(0.5, 3.0, t, dtype=torch.float64)[:, None]
    )
    norms = jac.norm(dim=1)
    initial = torch.ones(t, dtype=torch.float64)
    current = torch.tensor([0.9, 0.5, 0.7, 0.3], dtype=torch.float64)
    method = GradNorm(alpha=alpha, lr=1e-3)
    method.observe_losses(initial)  # L(0)
    method.aggregate(jac)  # first step: rates all 1
    method.observe_losses(current)
    rates = current / current.mean()
    targets = rates**alpha
    before = method.task_weights
    method.aggregate(jac)
    after = method.task_weights
    assert distance_to_targets(after, norms, targets) < distance_to_targets(before, norms, targets)


def test_alpha_zero_equalises_weighted_norms() -> None:
    jac = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    method = GradNorm(alpha=0.0, lr=0.01)
    method.observe_losses(torch.ones(3))
    for _ in range(400):
        method.aggregate(jac)
    weighted = method.task_weights * torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(weighted, weighted.mean().expand(3), rtol=0.05, atol=0.0)


def test_needs_losses_before_aggregate() -> None:
    with pytest.raises(ConfigError, match="GradNorm: needs the task losses"):
        GradNorm().aggregate(random_jacobian(2, 3))


def test_initial_losses_must_be_positive() -> None:
    method = GradNorm()
    method.bind(["a", "b"])
    with pytest.raises(TaskDataError, match=r"GradNorm: initial loss.*'b'"):
        method.observe_losses(torch.tensor([1.0, 0.0]))


def test_backward_records_losses_and_initial_losses() -> None:
    model, batch = tiny_model(num_tasks=2)
    method = GradNorm()
    losses, _ = losses_of(model, batch)
    record = method.backward(losses, model)
    assert sum(record.weights.values()) == pytest.approx(2.0)
    state = method.state_dict()
    expected = torch.stack([losses[t].detach().double() for t in ("t0", "t1")])
    torch.testing.assert_close(state["initial_losses"], expected)
    assert state["weights"].sum().item() == pytest.approx(2.0)
