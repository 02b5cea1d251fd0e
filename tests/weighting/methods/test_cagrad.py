"""CAGrad: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor

from mtlkit.weighting import MGDA, CAGrad
from tests.weighting.samplers import HARD, HARD_CASES


def test_cagrad_with_c_zero_is_the_sum() -> None:
    jac = HARD_CASES["conflicting"](4, 9, seed=3)
    torch.testing.assert_close(CAGrad(c=0.0).aggregate(jac), jac.sum(dim=0))


def primal_value(jac: np.ndarray, d: np.ndarray) -> float:
    return float(np.min(jac @ d))


def dense_primal(jac: np.ndarray, c: float) -> float:
    """max_d min_i g_iᵀd s.t. ‖d − g₀‖ ≤ c‖g₀‖, by SLSQP on (d, z) from several starts."""
    g0 = jac.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    p = jac.shape[1]
    cons = [
        {"type": "ineq", "fun": lambda x: jac @ x[:p] - x[p]},
        {"type": "ineq", "fun": lambda x: radius**2 - np.sum((x[:p] - g0) ** 2)},
    ]
    best = -np.inf
    for start in [g0, *jac]:
        x0 = np.concatenate([start, [np.min(jac @ start) - 1.0]])
        res = minimize(
            lambda x: -x[p],
            x0,
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        if res.success and np.sum((res.x[:p] - g0) ** 2) <= radius**2 * (1 + 1e-8):
            best = max(best, primal_value(jac, res.x[:p]))
    return best


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 2.0])
@pytest.mark.parametrize("name", list(HARD_CASES))
def test_cagrad_solves_its_primal(c: float, name: str) -> None:
    jac = HARD_CASES[name](3, 5, seed=11)
    t = jac.shape[0]
    d = (CAGrad(c=c, rescale=0).aggregate(jac) / t).numpy()
    g0 = jac.mean(dim=0).numpy()
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9) + 1e-15
    scale = float(jac.norm(dim=1).max()) ** 2
    assert primal_value(jac.numpy(), d) >= dense_primal(jac.numpy(), c) - 1e-7 * scale


@pytest.mark.parametrize("c", [0.2, 1.5])
@pytest.mark.parametrize("jac", HARD)
def test_cagrad_has_zero_duality_gap(c: float, jac: Tensor) -> None:
    """Primal value of d = dual value of the w recovered from the weights: both are optimal."""
    t = jac.shape[0]
    method = CAGrad(c=c, rescale=0)
    d = method.aggregate(jac) / t
    g0 = jac.mean(dim=0)
    radius = c * float(g0.norm())
    assert float((d - g0).norm()) <= radius * (1 + 1e-9) + 1e-15
    primal = float((jac @ d).min())
    w = method.last_weights() / t - 1.0 / t  # (√φ/‖g_w‖)·w*
    dual = np.inf
    if float(w.sum()) > 0:
        gw = (w / w.sum()) @ jac
        dual = float(gw @ g0) + radius * float(gw.norm())
    hull = MGDA().aggregate(jac) / t
    if float(hull.norm()) <= 1e-7 * float(jac.norm(dim=1).max()):  # g_w = 0 is feasible
        dual = min(dual, 0.0)
    assert primal >= dual - 1e-12 * float(jac.norm(dim=1).max()) ** 2


def test_cagrad_rescale_divides_the_update() -> None:
    jac = HARD_CASES["random"](3, 6, seed=2)
    raw = CAGrad(c=0.5, rescale=0).aggregate(jac)
    torch.testing.assert_close(CAGrad(c=0.5, rescale=1).aggregate(jac), raw / 1.25)
    torch.testing.assert_close(CAGrad(c=0.5, rescale=2).aggregate(jac), raw / 1.5)
