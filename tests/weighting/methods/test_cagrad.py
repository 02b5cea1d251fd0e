"""CAGrad: the method's own mathematics (shared properties: test_solvers_common.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize
from torch import Tensor

from mtlkit.weighting import MGDA, CAGrad
from mtlkit.weighting._gram import RANK_RTOL, Gram, gram_to_numpy
from mtlkit.weighting._qp import lower_bounded_qp, simplex_qp
from mtlkit.weighting.cagrad import _active_set_root
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


def brent_dual_weights(method: CAGrad, p: Gram) -> np.ndarray:
    """CAGrad's dual weights with the root of the slope found by Brent's method alone (the
    solver before the active-set iteration): the reference for :func:`_active_set_root`."""
    g, t = p.matrix, p.size
    mean = np.full(t, 1.0 / t)
    radius = method.c * math.sqrt(max(float(mean @ g @ mean), 0.0))
    top = math.sqrt(max(float(np.max(np.diag(g))), 0.0))
    if radius <= 1e-15 * top:
        return mean

    def inner(r: float) -> np.ndarray:
        return simplex_qp(p, shift=(r / radius) * mean)

    def slope(r: float) -> float:
        w = inner(r)
        return 1.0 - float(w @ g @ w) / r**2

    floor = math.sqrt(RANK_RTOL * t * p.eps) * top
    w_min = simplex_qp(p)
    low = max(math.sqrt(max(float(w_min @ g @ w_min), 0.0)), floor)
    if slope(low) >= 0:
        w = inner(low)
    elif slope(top) <= 0:
        w = inner(top)
    else:
        w = inner(brentq(slope, low, top, xtol=1e-15 * top, rtol=4 * np.finfo(float).eps))
    norm = math.sqrt(max(float(w @ g @ w), 0.0))
    if norm <= 1.01 * floor:
        return lower_bounded_qp(p, mean)
    return mean + (radius / norm) * w


def degenerate_jacobians() -> list[tuple[str, np.ndarray]]:
    """Random, rank-deficient (T > P), duplicate rows, a zero row, a shared offset (all tasks
    agree), nearly collinear, T = 1 and T = 2."""
    rng = np.random.default_rng(5)
    out = []
    for k in range(12):
        t = int(rng.integers(3, 25))
        out.append((f"random{k}", rng.standard_normal((t, 30))))
        out.append((f"rank{k}", rng.standard_normal((t, max(1, t // 3)))))
        dup = rng.standard_normal((t, 20))
        dup[1] = dup[0]
        dup[2] = 3.0 * dup[0]
        out.append((f"duplicate{k}", dup))
        zero = rng.standard_normal((t, 20))
        zero[-1] = 0.0
        out.append((f"zero{k}", zero))
        out.append((f"agree{k}", rng.standard_normal((t, 20)) + 2.0 * rng.standard_normal(20)))
        out.append((f"collinear{k}", np.outer(rng.random(t) + 0.5, rng.standard_normal(20))))
        out.append((f"one{k}", rng.standard_normal((1, 7))))
        out.append((f"two{k}", rng.standard_normal((2, 7))))
    return out


@pytest.mark.parametrize("c", [0.1, 0.4, 2.0])
@pytest.mark.parametrize(("name", "jac"), degenerate_jacobians())
def test_cagrad_matches_the_brent_reference(c: float, name: str, jac: np.ndarray) -> None:
    """The active-set root gives Brent's answer: the same update Jᵀw to 1e-9 of the largest
    gradient norm (the roots agree to rounding; the QP at the root is the same exact QP)."""
    p = Gram.of(jac @ jac.T)
    method = CAGrad(c=c)
    new, ref = method.dual_weights(p), brent_dual_weights(method, p)
    scale = float(np.linalg.norm(jac, axis=1).max()) / math.sqrt(p.scale)
    assert np.linalg.norm((new - ref) @ jac) <= 1e-9 * scale * max(1.0, float(np.abs(ref).sum()))


def test_active_set_root_settles_on_generic_problems() -> None:
    """On generic Gram matrices the active-set iteration finds the root itself (Brent's method
    is the fallback, not the rule), and the slope there is zero to rounding."""
    rng = np.random.default_rng(2)
    settled = 0
    for _ in range(40):
        t = int(rng.integers(2, 30))
        jac = rng.standard_normal((t, 40))
        p = Gram.of(jac @ jac.T)
        g, mean = p.matrix, np.full(t, 1.0 / t)
        radius = 0.4 * math.sqrt(float(mean @ g @ mean))
        top = math.sqrt(float(np.max(np.diag(g))))
        w_min = simplex_qp(p)
        low = math.sqrt(float(w_min @ g @ w_min))

        def inner(r: float, radius: float = radius, p: Gram = p, mean: np.ndarray = mean) -> Any:
            return simplex_qp(p, shift=(r / radius) * mean)

        w_low = inner(low)
        if 1.0 - float(w_low @ g @ w_low) / low**2 >= 0:
            continue
        w = _active_set_root(p, radius, low, top, w_low, inner)
        if w is not None:
            settled += 1
            root = math.sqrt(float(w @ g @ w))
            np.testing.assert_allclose(inner(root), w, atol=1e-8)
    assert settled >= 30


@pytest.mark.parametrize("seed", range(4))
def test_cagrad_matches_the_brent_reference_on_float32_grams(seed: int) -> None:
    """A float32 G (the engine's usual) is prepared with float32's precision (its rounding-level
    eigenvalues truncated); the active-set root still gives Brent's answer."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(3, 30))
    jac = rng.standard_normal((t, int(rng.integers(2, 50)))).astype(np.float32)
    gram = torch.from_numpy(jac @ jac.T)
    p = gram_to_numpy(gram, "test")
    method = CAGrad(c=0.5)
    new, ref = method.dual_weights(p), brent_dual_weights(method, p)
    scale = float(np.linalg.norm(jac, axis=1).max()) / math.sqrt(p.scale)
    update = (new - ref) @ jac.astype(np.float64)
    assert np.linalg.norm(update) <= 1e-9 * scale * max(1.0, float(np.abs(ref).sum()))


@pytest.mark.parametrize("c", [0.4, 1.0, 2.0])
def test_cagrad_when_brent_cannot_settle(c: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank-deficient 19 × 9 Jacobian whose slope changes sign only at rounding level near
    the root: Brent's method used to raise "failed to converge"; its last bracket is kept, and
    the weights are optimal (zero duality gap)."""
    from pathlib import Path

    import scipy.optimize

    calls: list[float] = []
    original = scipy.optimize.brentq

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1.0)
        return original(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "brentq", spy)
    jac = torch.from_numpy(np.load(Path(__file__).parent.parent / "data" / "cagrad_brent_fail.npy"))
    test_cagrad_has_zero_duality_gap(c, jac)
    if c == 1.0:
        assert calls, "the case no longer reaches Brent's method"
