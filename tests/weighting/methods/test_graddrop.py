"""GradDrop (Chen et al. 2020): gradient sign dropout."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting import EW, GradDrop
from tests.weighting.projection_helpers import losses_of, shared_grad, tiny_model
from tests.weighting.samplers import random_jacobian, strongly_conflicting


def test_agreeing_signs_keep_everything() -> None:
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    jac = random_jacobian(4, 7, seed=1).abs() * signs  # each column has one sign
    for seed in range(5):
        torch.testing.assert_close(GradDrop(seed=seed).aggregate(jac), jac.sum(dim=0))


def test_full_leak_gives_the_sum() -> None:
    jac = strongly_conflicting(5, 30, seed=2)
    torch.testing.assert_close(GradDrop(leak=1.0).aggregate(jac), jac.sum(dim=0))


def test_each_coordinate_keeps_one_sign_only() -> None:
    jac = strongly_conflicting(4, 200, seed=3)
    update = GradDrop().aggregate(jac)
    positive = jac.clamp_min(0).sum(dim=0)
    negative = jac.clamp_max(0).sum(dim=0)
    kept_positive = torch.isclose(update, positive)
    kept_negative = torch.isclose(update, negative)
    assert bool((kept_positive | kept_negative).all())
    assert kept_positive.any() and kept_negative.any()


def test_sign_is_kept_with_probability_equal_to_purity() -> None:
    """E[update] = P Σ_{g>0} g + (1 − P) Σ_{g<0} g with P = ½(1 + Σ g / Σ |g|)."""
    n = 20000
    jac = torch.tensor([[1.0], [-3.0]], dtype=torch.float64).expand(2, n)
    update = GradDrop(seed=7).aggregate(jac)
    purity = 0.5 * (1 + (1.0 - 3.0) / 4.0)
    expected = purity * 1.0 + (1 - purity) * -3.0
    assert abs(update.mean().item() - expected) < 0.05
    assert set(update.unique().tolist()) == {1.0, -3.0}


def test_seeded_draws_are_reproducible() -> None:
    jac = strongly_conflicting(3, 64, seed=4)
    a, b = GradDrop(seed=11), GradDrop(seed=11)
    for _ in range(3):
        torch.testing.assert_close(a.aggregate(jac), b.aggregate(jac))
    assert not torch.equal(GradDrop(seed=1).aggregate(jac), GradDrop(seed=2).aggregate(jac))


def test_per_task_leak() -> None:
    jac = strongly_conflicting(3, 50, seed=5)
    method = GradDrop(leak={"a": 1.0}, seed=3)
    method.bind(["a", "b", "c"])
    update = method.aggregate(jac)
    reference = GradDrop(seed=3).aggregate(jac)  # same draws, no leak
    # task a passes through entirely; b and c are masked exactly as without leak
    torch.testing.assert_close(update - jac[0], reference - _kept(jac, 0, seed=3))


def _kept(jac: torch.Tensor, task: int, seed: int) -> torch.Tensor:
    """What task ``task`` contributes to GradDrop's update (same draws as ``GradDrop(seed)``)."""
    purity = 0.5 * (1 + jac.sum(0) / jac.abs().sum(0))
    u = torch.rand(purity.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = jac[task]
    keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
    return g * keep


def test_per_task_leak_rejects_unknown_tasks() -> None:
    method = GradDrop(leak={"z": 0.5})
    with pytest.raises(ConfigError, match="GradDrop: option 'leak' names unknown task"):
        method.bind(["a", "b"])


def test_activation_mode_follows_the_algorithm_box() -> None:
    """With the activation A, purity uses sgn(A) ∘ ∇_A L_i summed over the batch."""
    g = torch.Generator().manual_seed(8)
    act = torch.randn(3, 4, generator=g, dtype=torch.float64)  # batch 3, 4 features
    grads = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    update = GradDrop(seed=9).aggregate(grads.reshape(2, -1), activation=act)
    signed = (grads * act.sign()).sum(dim=1)  # 2 × 4
    purity = 0.5 * (1 + signed.sum(0) / signed.abs().sum(0))
    u = torch.rand(4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    keep = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))  # 2 × 4
    expected = (grads * keep.unsqueeze(1)).sum(dim=0).reshape(-1)
    torch.testing.assert_close(update, expected)


def test_activation_must_fit_the_jacobian() -> None:
    with pytest.raises(TaskDataError, match="GradDrop: activation"):
        GradDrop().aggregate(torch.ones(2, 6), activation=torch.ones(2, 2))


def test_representation_mode_with_full_leak_equals_equal_weighting() -> None:
    model, batch = tiny_model(num_tasks=3)
    losses, rep = losses_of(model, batch)
    record = GradDrop(leak=1.0, jacobian="representation").backward(
        losses, model, representation=rep
    )
    dropped = shared_grad(model)
    assert set(record.weights) == {"t0", "t1", "t2"}
    model.zero_grad()
    losses, _ = losses_of(model, batch)
    EW().backward(losses, model)
    torch.testing.assert_close(dropped, shared_grad(model), rtol=1e-5, atol=1e-7)


def test_representation_mode_drops_gradient() -> None:
    model, batch = tiny_model(num_tasks=3, seed=1)
    losses, rep = losses_of(model, batch)
    method = GradDrop(jacobian="representation")
    assert method.needs_representation
    method.backward(losses, model, representation=rep)
    dropped = shared_grad(model)
    model.zero_grad()
    losses, _ = losses_of(model, batch)
    EW().backward(losses, model)
    assert torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, shared_grad(model))
