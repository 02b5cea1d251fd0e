"""PCGrad (Yu et al. 2020): projection of conflicting gradients."""

from __future__ import annotations

import torch

from mtlkit.weighting import PCGrad
from tests.weighting.projection_helpers import conflicting_pair
from tests.weighting.samplers import random_jacobian, strongly_conflicting


def closed_form(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """The two-task PCGrad update, written out."""
    dot = g1 @ g2
    if dot >= 0:
        return g1 + g2
    return (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)


def test_two_conflicting_tasks_match_closed_form_and_stop_conflicting() -> None:
    jac = conflicting_pair(6, seed=1)
    g1, g2 = jac
    assert g1 @ g2 < 0
    update = PCGrad().aggregate(jac)
    torch.testing.assert_close(update, closed_form(g1, g2))
    # each projected gradient no longer conflicts with the other's original gradient
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    p2 = update - p1
    assert p1 @ g2 >= -1e-12 and p2 @ g1 >= -1e-12
    torch.testing.assert_close(p2, g2 - (g1 @ g2) / (g1 @ g1) * g1)


def test_non_conflicting_gradients_are_summed() -> None:
    jac = random_jacobian(5, 9, seed=2).abs()  # all pairwise inner products positive
    torch.testing.assert_close(PCGrad().aggregate(jac), jac.sum(dim=0))


def test_update_is_a_combination_with_the_recorded_weights() -> None:
    jac = strongly_conflicting(4, 10, seed=3)
    method = PCGrad(seed=5)
    update = method.aggregate(jac)
    weights = method.last_weights()
    assert weights is not None
    torch.testing.assert_close(update, weights @ jac)


def reference(jac: torch.Tensor, seed: int) -> torch.Tensor:
    """Algorithm 1 on the gradient vectors themselves, with the orders PCGrad(seed) draws."""
    generator = torch.Generator().manual_seed(seed)
    t = jac.shape[0]
    projected = []
    for i in range(t):
        g = jac[i].clone()
        others = [j for j in range(t) if j != i]
        for k in torch.randperm(t - 1, generator=generator).tolist():
            gj = jac[others[k]]
            if g @ gj < 0:
                g = g - (g @ gj) / (gj @ gj) * gj
        projected.append(g)
    return torch.stack(projected).sum(dim=0)


def test_many_tasks_follow_the_algorithm_box() -> None:
    """The Gram-matrix form equals projecting the vectors, in the same random order."""
    for t, p in ((6, 12), (30, 40)):  # T = 30: every task's loop runs as one vector step
        jac = strongly_conflicting(t, p, seed=4)
        for seed in (2, 9):
            torch.testing.assert_close(PCGrad(seed=seed).aggregate(jac), reference(jac, seed))


def test_seed_fixes_the_random_order() -> None:
    jac = strongly_conflicting(5, 8, seed=6)
    a, b = PCGrad(seed=3), PCGrad(seed=3)
    for _ in range(3):
        torch.testing.assert_close(a.aggregate(jac), b.aggregate(jac))
    results = {tuple(PCGrad(seed=s).aggregate(jac).round(decimals=8).tolist()) for s in range(8)}
    assert len(results) > 1  # the order matters with T > 2 conflicting tasks
