"""MoCo (Fernando et al. 2023): tracked gradients and a projected step on λ."""

from __future__ import annotations

import pytest
import torch

from mtlkit.errors import TaskDataError
from mtlkit.weighting import MoCo
from mtlkit.weighting._manipulation import project_simplex
from mtlkit.weighting.moco import GRAM_BLOCK, _gram64
from tests.weighting.projection_helpers import conflicting_pair
from tests.weighting.samplers import random_jacobian


@pytest.mark.parametrize("seed", range(5))
def test_simplex_projection_is_the_nearest_point(seed: int) -> None:
    v = random_jacobian(1, 6, seed=seed)[0] * 3
    x = project_simplex(v)
    assert (x >= 0).all() and x.sum().item() == pytest.approx(1.0)
    # optimality: v − x = θ·1 + μ with μ ≥ 0 and μ_i = 0 where x_i > 0
    diff = v - x
    theta = diff[x > 0].mean()
    torch.testing.assert_close(diff[x > 0], theta.expand(int((x > 0).sum())))
    assert (diff[x == 0] <= theta + 1e-12).all()
    torch.testing.assert_close(project_simplex(x), x)  # idempotent


def test_first_step_closed_form() -> None:
    jac = random_jacobian(3, 7, seed=1)
    method = MoCo(gamma=0.05)
    update = method.aggregate(jac)
    lam0 = torch.full((3,), 1 / 3, dtype=torch.float64)
    lam1 = project_simplex(lam0 - 0.05 * (jac @ jac.T) @ lam0)
    torch.testing.assert_close(update, 3 * lam1 @ jac)
    torch.testing.assert_close(method.task_weights, 3 * lam1)


def test_second_step_tracks_the_gradients() -> None:
    first, second = random_jacobian(2, 5, seed=2), random_jacobian(2, 5, seed=3)
    method = MoCo(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.2)
    method.aggregate(first)
    lam1 = method.task_weights / 2
    update = method.aggregate(second)
    y2 = first - 0.5 / 2**0.5 * (first - second)
    reg = y2 @ y2.T + 0.2 * torch.eye(2, dtype=torch.float64)
    lam2 = project_simplex(lam1 - 0.1 / 2**0.5 * reg @ lam1)
    torch.testing.assert_close(update, 2 * lam2 @ y2)


def test_lambda_converges_to_the_min_norm_weights() -> None:
    """With a fixed Jacobian, λ runs projected gradient descent on ½ λᵀ G λ: MGDA's point."""
    jac = conflicting_pair(6, seed=4)
    g1, g2 = jac
    method = MoCo(gamma=0.01, gamma_sigma=0.0)
    for _ in range(2000):
        update = method.aggregate(jac)
    a = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    a = min(max(a, 0.0), 1.0)
    torch.testing.assert_close(update, 2 * (a * g1 + (1 - a) * g2), rtol=1e-4, atol=1e-6)


def test_a_task_first_seen_later_starts_tracking_at_its_gradient() -> None:
    """A task absent from the first steps has a NaN row in Y (the state's fill) until it is
    present: its tracked gradient then starts at its Jacobian row, the others are tracked."""
    first, second = random_jacobian(2, 5, seed=5), random_jacobian(3, 5, seed=6)
    method = MoCo(beta=0.5, beta_sigma=0.0)
    method.bind(["a", "b", "c"])
    with method.restrict(["a", "c"]):
        method.aggregate(first)
    assert method._y is not None and method._y[1].isnan().all()
    method.aggregate(second)
    want = torch.stack([0.5 * (first[0] + second[0]), second[1], 0.5 * (first[1] + second[2])])
    torch.testing.assert_close(method._y, want)


def test_shape_change_is_an_error() -> None:
    method = MoCo()
    method.aggregate(random_jacobian(2, 5))
    with pytest.raises(TaskDataError, match="MoCo"):
        method.aggregate(random_jacobian(2, 6))


@pytest.mark.parametrize("columns", [5, GRAM_BLOCK, 2 * GRAM_BLOCK + 3])
def test_gram64_is_the_float64_gram(columns: int) -> None:
    """Y Yᵀ by float64 column blocks equals the product of the float64 copy, to float64
    rounding (a float32 product would be off by about 1e-7)."""
    y = torch.randn(5, columns, generator=torch.Generator().manual_seed(columns))
    expected = y.double() @ y.double().T
    torch.testing.assert_close(_gram64(y), expected, rtol=1e-13, atol=1e-13 * columns)
    assert _gram64(y).dtype == torch.float64
