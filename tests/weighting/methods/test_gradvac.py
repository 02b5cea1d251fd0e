"""GradVac (Wang et al. 2021): adaptive gradient similarity goals."""

from __future__ import annotations

import math

import pytest
import torch

from mtlkit.errors import TaskDataError
from mtlkit.weighting import GradVac
from tests.weighting.projection_helpers import conflicting_pair
from tests.weighting.samplers import random_jacobian, strongly_conflicting


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def with_targets(method: GradVac, targets: torch.Tensor) -> GradVac:
    method.load_state_dict({**method.state_dict(), "targets": targets})
    return method


def test_reached_targets_change_nothing() -> None:
    jac = random_jacobian(4, 10, seed=1).abs()  # pairwise cosines > 0 = the initial goals
    torch.testing.assert_close(GradVac().aggregate(jac), jac.sum(dim=0))
    conflicting = strongly_conflicting(4, 10, seed=2)
    lowest = with_targets(GradVac(), -torch.ones(4, 4, dtype=torch.float64))
    torch.testing.assert_close(lowest.aggregate(conflicting), conflicting.sum(dim=0))


def test_two_tasks_are_moved_exactly_to_their_goal() -> None:
    """The correction makes cos(g_i', g_j) = φ̂_ij (closed form for two tasks)."""
    jac = conflicting_pair(6, seed=3)
    g1, g2 = jac
    goal = 0.3
    method = with_targets(GradVac(), torch.full((2, 2), goal, dtype=torch.float64))

    def vaccinate(gi: torch.Tensor, gj: torch.Tensor) -> torch.Tensor:
        phi = cosine(gi, gj)
        scale = gi.norm() * (goal * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - goal**2))
        return gi + scale / (gj.norm() * math.sqrt(1 - goal**2)) * gj

    p1, p2 = vaccinate(g1, g2), vaccinate(g2, g1)
    assert cosine(p1, g2) == pytest.approx(goal) and cosine(p2, g1) == pytest.approx(goal)
    torch.testing.assert_close(method.aggregate(jac), p1 + p2)


def test_targets_follow_an_exponential_moving_average() -> None:
    jac = conflicting_pair(6, seed=4)
    phi = cosine(jac[0], jac[1])
    method = GradVac(beta=0.25)
    method.aggregate(jac)
    targets = method.targets
    assert targets is not None
    expected = torch.tensor([[0.0, 0.25 * phi], [0.25 * phi, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(targets, expected)
    method.aggregate(jac)  # the corrected gradient reached the goal, the EMA sees the raw φ
    torch.testing.assert_close(method.targets, expected * (1 + 0.75))


def test_default_beta_is_the_papers() -> None:
    assert GradVac().beta == pytest.approx(1e-2)


def test_state_round_trip_continues_identically() -> None:
    jacs = [strongly_conflicting(5, 9, seed=s) for s in range(6)]
    original = GradVac(beta=0.1, seed=4)
    for jac in jacs[:3]:
        original.aggregate(jac)
    restored = GradVac(beta=0.1, seed=4)
    restored.load_state_dict(original.state_dict())
    torch.testing.assert_close(restored.targets, original.targets)
    for jac in jacs[3:]:
        torch.testing.assert_close(restored.aggregate(jac), original.aggregate(jac))


def test_wrong_number_of_tasks_is_an_error() -> None:
    method = GradVac()
    method.aggregate(random_jacobian(3, 5))
    with pytest.raises(TaskDataError, match="GradVac"):
        method.aggregate(random_jacobian(4, 5))
