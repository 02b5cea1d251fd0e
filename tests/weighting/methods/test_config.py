"""ConFIG (Liu et al. 2024): conflict-free inverse gradients."""

from __future__ import annotations

import pytest
import torch

from mtlkit.weighting import ConFIG
from tests.weighting.projection_helpers import conflicting_pair
from tests.weighting.samplers import random_jacobian


@pytest.mark.parametrize("t", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_positive_cosine_with_every_task(t: int, seed: int) -> None:
    jac = random_jacobian(t, 20, seed=seed) * torch.logspace(-2, 2, t, dtype=torch.float64)[:, None]
    update = ConFIG().aggregate(jac)
    cosines = (jac / jac.norm(dim=1, keepdim=True)) @ update / update.norm()
    assert (cosines > 0).all()
    torch.testing.assert_close(cosines, cosines.mean().expand(t))


def test_length_is_the_sum_of_projections() -> None:
    jac = random_jacobian(4, 12, seed=2)
    update = ConFIG().aggregate(jac)
    direction = update / update.norm()
    torch.testing.assert_close(update.norm(), (jac @ direction).sum())


def test_two_tasks_follow_the_bisector() -> None:
    """Two tasks: v solves u_1·v = u_2·v = 1, the bisector of the unit gradients."""
    jac = conflicting_pair(7, seed=3)
    units = jac / jac.norm(dim=1, keepdim=True)
    bisector = units.sum(dim=0) / units.sum(dim=0).norm()
    expected = (jac @ bisector).sum() * bisector
    torch.testing.assert_close(ConFIG().aggregate(jac), expected)


def test_zero_gradient_is_left_out() -> None:
    jac = random_jacobian(4, 10, seed=4)
    with_zero = torch.cat([jac, torch.zeros(1, 10, dtype=torch.float64)])
    method = ConFIG()
    torch.testing.assert_close(method.aggregate(with_zero), ConFIG().aggregate(jac))
    assert method.last_weights()[-1] == 0


def test_invariant_to_gradient_scale_in_direction() -> None:
    """The direction depends on the unit gradients only; the length scales with the norms."""
    jac = random_jacobian(3, 8, seed=5)
    scaled = jac * torch.tensor([[0.1], [1.0], [30.0]], dtype=torch.float64)
    a, b = ConFIG().aggregate(jac), ConFIG().aggregate(scaled)
    torch.testing.assert_close(a / a.norm(), b / b.norm())
