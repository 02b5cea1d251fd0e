"""The exact QP and α-fair solvers of mtlkit.weighting._qp against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtlkit.weighting import _qp
from mtlkit.weighting._qp import alpha_fair_weights, lower_bounded_qp, simplex_qp

from .samplers import HARD_CASES

SIZES = [(2, 5), (3, 2), (5, 20), (8, 4), (8, 30)]


def cases() -> list[tuple[str, int, int, int]]:
    out = []
    for name in HARD_CASES:
        for t, p in SIZES:
            if name == "conflicting" and p < t:
                continue
            out.append((name, t, p, 0))
            out.append((name, t, p, 1))
    return out


def gram_of(name: str, t: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    jac = HARD_CASES[name](t, p, seed).numpy()
    return jac, jac @ jac.T


def brute_simplex(gram: np.ndarray, shift: np.ndarray) -> float:
    """min over α ∈ Δ of ½(α+s)ᵀG(α+s): best feasible KKT point over all supports."""
    t = gram.shape[0]
    best = np.inf
    for size in range(1, t + 1):
        for support in itertools.combinations(range(t), size):
            s = list(support)
            k = np.block([[gram[np.ix_(s, s)], np.ones((size, 1))], [np.ones((1, size)), 0.0]])
            rhs = np.concatenate([-gram[s] @ shift, [1.0]])
            sol = np.linalg.lstsq(k, rhs, rcond=None)[0][:size]
            if sol.min() < -1e-12:
                continue
            alpha = np.zeros(t)
            alpha[s] = sol / sol.sum()
            best = min(best, 0.5 * (alpha + shift) @ gram @ (alpha + shift))
    return best


def brute_lower_bounded(gram: np.ndarray, lower: np.ndarray) -> float:
    """min over v ≥ u of ½vᵀGv: best feasible stationary point over all free sets."""
    t = gram.shape[0]
    best = 0.5 * lower @ gram @ lower
    for size in range(1, t + 1):
        for free in itertools.combinations(range(t), size):
            f = list(free)
            rest = [i for i in range(t) if i not in free]
            v = lower.copy()
            v[f] = np.linalg.lstsq(gram[np.ix_(f, f)], -gram[np.ix_(f, rest)] @ lower[rest])[0]
            if (v - lower).min() >= -1e-12:
                best = min(best, 0.5 * v @ gram @ v)
    return best


@pytest.mark.parametrize(("name", "t", "p", "seed"), cases())
def test_simplex_qp_matches_brute_force(name: str, t: int, p: int, seed: int) -> None:
    _, gram = gram_of(name, t, p, seed)
    scale = gram.diagonal().max()
    for shift in (np.zeros(t), np.full(t, 0.7 / t)):
        alpha = simplex_qp(gram, shift=shift)
        assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-12
        value = 0.5 * (alpha + shift) @ gram @ (alpha + shift)
        assert value <= brute_simplex(gram, shift) + 1e-12 * scale
        # KKT: the gradient is smallest, and constant, on the support
        grad = gram @ (alpha + shift)
        support = alpha > 1e-9
        assert np.ptp(grad[support]) <= 1e-9 * scale
        assert grad.min() >= grad[support].min() - 1e-9 * scale


@pytest.mark.parametrize(("name", "t", "p", "seed"), cases())
def test_lower_bounded_qp_matches_brute_force(name: str, t: int, p: int, seed: int) -> None:
    _, gram = gram_of(name, t, p, seed)
    scale = gram.diagonal().max()
    rng = np.random.default_rng(seed)
    for lower in (np.eye(t)[0], np.ones(t), rng.random(t)):
        v = lower_bounded_qp(gram, lower)
        assert (v - lower).min() >= 0
        assert 0.5 * v @ gram @ v <= brute_lower_bounded(gram, lower) + 1e-12 * scale
        assert (gram @ v).min() >= -1e-10 * scale * np.abs(v).sum()


@pytest.mark.parametrize(("name", "t", "p", "seed"), [c for c in cases() if c[1] <= 5])
def test_enumeration_fallback_is_exact(
    monkeypatch: pytest.MonkeyPatch, name: str, t: int, p: int, seed: int
) -> None:
    """When NNLS gives up, the active-set enumeration still returns the optimum."""
    monkeypatch.setattr(_qp, "_nnls", lambda a, b: None)
    _, gram = gram_of(name, t, p, seed)
    scale = gram.diagonal().max()
    alpha = simplex_qp(gram)
    assert 0.5 * alpha @ gram @ alpha <= brute_simplex(gram, np.zeros(t)) + 1e-12 * scale
    v = lower_bounded_qp(gram, np.ones(t))
    assert 0.5 * v @ gram @ v <= brute_lower_bounded(gram, np.ones(t)) + 1e-12 * scale


def test_closed_form_cases() -> None:
    # two orthogonal gradients of norms 1 and 2: min-norm weights ∝ 1/‖g‖² = (4/5, 1/5)
    gram = np.diag([1.0, 4.0])
    np.testing.assert_allclose(simplex_qp(gram), [0.8, 0.2], atol=1e-14)
    # g1 = (1, 0), g2 = (−1, 1): projecting g1 onto {x : g1ᵀx ≥ 0, g2ᵀx ≥ 0} gives (½, ½)
    jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    v = lower_bounded_qp(jac @ jac.T, np.array([1.0, 0.0]))
    np.testing.assert_allclose(jac.T @ v, [0.5, 0.5], atol=1e-14)


def test_zero_gram_is_feasible_and_finite() -> None:
    zero = np.zeros((4, 4))
    np.testing.assert_array_equal(simplex_qp(zero), np.full(4, 0.25))
    np.testing.assert_array_equal(lower_bounded_qp(zero, np.ones(4)), np.ones(4))
    np.testing.assert_array_equal(alpha_fair_weights(zero), np.zeros(4))


def test_non_finite_gram_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        simplex_qp(np.array([[1.0, np.nan], [np.nan, 1.0]]))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", ["random", "dominant_norm", "nearly_collinear"])
def test_alpha_fair_equation_holds(alpha: float, name: str) -> None:
    jac = HARD_CASES[name](5, 20, 3).numpy()
    gram = jac @ jac.T
    beta = alpha_fair_weights(gram, alpha)
    assert beta.min() > 0
    np.testing.assert_allclose((gram @ beta) * beta ** (1 / alpha), 1.0, rtol=1e-10)


def test_alpha_fair_drops_zero_rows_and_stationary_points() -> None:
    jac = HARD_CASES["zero_row"](4, 10, 0).numpy()
    gram = jac @ jac.T
    beta = alpha_fair_weights(gram)
    assert beta[-1] == 0
    np.testing.assert_allclose((gram @ beta)[:-1] * beta[:-1], 1.0, rtol=1e-10)
    # centred rows: 0 lies in the convex hull, no direction helps every task
    jac = HARD_CASES["conflicting"](4, 10, 0).numpy()
    np.testing.assert_array_equal(alpha_fair_weights(jac @ jac.T), np.zeros(4))
