"""The exact QP and α-fair solvers (mtlkit.weighting._qp and its parts _gram, _nnls, _fair):
against brute force, against an independent solver, on degenerate Gram matrices, and with the
fallback forced."""

from __future__ import annotations

import itertools
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import minimize

from mtlkit.weighting import _nnls
from mtlkit.weighting._fair import accurate_residual, alpha_fair_weights, stationary
from mtlkit.weighting._gram import Gram
from mtlkit.weighting._nnls import SolverWarning, active_set_nnls, nnls_violation
from mtlkit.weighting._qp import (
    lower_bounded_kkt_violation,
    lower_bounded_qp,
    lower_bounded_qps,
    simplex_kkt_violation,
    simplex_qp,
)

from .samplers import DEGENERATE, HARD_CASES

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


def gram_of(name: str, t: int, p: int, seed: int) -> np.ndarray:
    jac = HARD_CASES[name](t, p, seed).numpy()
    return jac @ jac.T


def degenerate_gram(name: str, t: int, p: int, seed: int, at: int) -> np.ndarray:
    jac = DEGENERATE[name](t, p, seed, at).numpy()
    return jac @ jac.T


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


def check_simplex(gram: np.ndarray, shift: np.ndarray, alpha: np.ndarray) -> None:
    scale = gram.diagonal().max()
    assert alpha.min() >= 0 and abs(alpha.sum() - 1) < 1e-12
    value = 0.5 * (alpha + shift) @ gram @ (alpha + shift)
    assert value <= brute_simplex(gram, shift) + 1e-12 * scale


def check_lower_bounded(gram: np.ndarray, lower: np.ndarray, v: np.ndarray) -> None:
    scale = gram.diagonal().max()
    assert (v - lower).min() >= 0
    assert 0.5 * v @ gram @ v <= brute_lower_bounded(gram, lower) + 1e-12 * scale
    # dual-cone feasibility: every task gradient has g_iᵀ(Jᵀv) ≥ 0, up to rounding
    assert (gram @ v).min() >= -1e-10 * scale * np.abs(v).sum()


# ---------------------------------------------------------------------------- brute force


@pytest.mark.parametrize(("name", "t", "p", "seed"), cases())
def test_simplex_qp_matches_brute_force(name: str, t: int, p: int, seed: int) -> None:
    gram = gram_of(name, t, p, seed)
    for shift in (np.zeros(t), np.full(t, 0.7 / t)):
        check_simplex(gram, shift, simplex_qp(gram, shift=shift))


@pytest.mark.parametrize(("name", "t", "p", "seed"), cases())
def test_lower_bounded_qp_matches_brute_force(name: str, t: int, p: int, seed: int) -> None:
    gram = gram_of(name, t, p, seed)
    rng = np.random.default_rng(seed)
    for lower in (np.eye(t)[0], np.ones(t), rng.random(t)):
        check_lower_bounded(gram, lower, lower_bounded_qp(gram, lower))


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_rows_at_every_position_match_brute_force(name: str) -> None:
    """One degenerate row (zero, duplicate, parallel, nearly collinear, 1e±6 norm, stationary)
    at each position of T = 5 rows, 10 seeds: both QPs reach the brute-force optimum."""
    t, p = 5, 6
    for seed, at in itertools.product(range(10), range(t)):
        gram = degenerate_gram(name, t, p, seed, at)
        for shift in (np.zeros(t), np.full(t, 0.3)):
            check_simplex(gram, shift, simplex_qp(gram, shift=shift))
        for lower in (np.eye(t)[at], np.ones(t)):
            check_lower_bounded(gram, lower, lower_bounded_qp(gram, lower))


def test_batched_rows_equal_single_solves() -> None:
    for name, (t, p) in itertools.product(HARD_CASES, [(3, 2), (6, 20), (10, 40)]):
        if name == "conflicting" and p < t:
            continue
        gram = gram_of(name, t, p, 0)
        lowers = np.vstack([np.eye(t), np.random.default_rng(t).random((2, t)), np.ones((1, t))])
        batch = lower_bounded_qps(gram, lowers)
        assert batch.shape == lowers.shape
        for u, v in zip(lowers, batch, strict=True):
            single = lower_bounded_qp(gram, u)
            np.testing.assert_allclose(v, single, rtol=1e-12, atol=1e-12 * np.abs(single).max())


# ---------------------------------------------------------------------------- zero gradients


def test_zero_gradients_follow_the_stated_rules() -> None:
    jac = np.random.default_rng(0).standard_normal((5, 7))
    jac[[1, 3]] = 0.0
    gram = jac @ jac.T
    # min-norm point: 0 is in the hull, the mass goes to the zero gradients, shared equally
    alpha = simplex_qp(gram)
    np.testing.assert_allclose(alpha, [0.0, 0.5, 0.0, 0.5, 0.0], rtol=0, atol=1e-15)
    # with a shift the zero gradients share whatever mass the optimum leaves them
    shifted = simplex_qp(gram, shift=np.full(5, 0.4))
    assert shifted[1] == shifted[3]
    check_simplex(gram, np.full(5, 0.4), shifted)
    # lower-bounded: a zero gradient keeps its lower bound exactly
    lower = np.array([0.3, 0.7, 1.0, 2.0, 0.1])
    v = lower_bounded_qp(gram, lower)
    assert v[1] == 0.7 and v[3] == 2.0
    check_lower_bounded(gram, lower, v)
    # α-fair: weight 0, the others solve the equation among themselves
    beta = alpha_fair_weights(gram)
    assert beta[1] == 0.0 and beta[3] == 0.0
    live = [0, 2, 4]
    np.testing.assert_allclose((gram @ beta)[live] * beta[live], 1.0, rtol=1e-10)


def test_a_tiny_gradient_is_not_a_zero_gradient() -> None:
    """A gradient 1e-6 times the others still constrains the dual cone (it is a direction)."""
    jac = np.array([[1.0, 0.0], [-1e-6, 1e-6]])
    v = lower_bounded_qp(jac @ jac.T, np.array([1.0, 0.0]))
    np.testing.assert_allclose(jac.T @ v, [0.5, 0.5], atol=1e-12)


def test_zero_gram_is_feasible_and_finite() -> None:
    zero = np.zeros((4, 4))
    np.testing.assert_array_equal(simplex_qp(zero), np.full(4, 0.25))
    np.testing.assert_array_equal(lower_bounded_qp(zero, np.ones(4)), np.ones(4))
    np.testing.assert_array_equal(lower_bounded_qps(np.zeros((3, 3)), np.eye(3)), np.eye(3))
    np.testing.assert_array_equal(alpha_fair_weights(zero), np.zeros(4))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        simplex_qp(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        lower_bounded_qps(np.eye(3), np.ones(3))
    with pytest.raises(ValueError, match="square"):
        Gram.of(np.ones((2, 3)))


def test_closed_form_cases() -> None:
    # two orthogonal gradients of norms 1 and 2: min-norm weights ∝ 1/‖g‖² = (4/5, 1/5)
    np.testing.assert_allclose(simplex_qp(np.diag([1.0, 4.0])), [0.8, 0.2], atol=1e-14)
    # g1 = (1, 0), g2 = (−1, 1): projecting g1 onto {x : g1ᵀx ≥ 0, g2ᵀx ≥ 0} gives (½, ½)
    jac = np.array([[1.0, 0.0], [-1.0, 1.0]])
    v = lower_bounded_qp(jac @ jac.T, np.array([1.0, 0.0]))
    np.testing.assert_allclose(jac.T @ v, [0.5, 0.5], atol=1e-14)


# ---------------------------------------------------------------------------- precision


def test_float32_gram_at_a_stationary_point_is_projected() -> None:
    """The issue's reproducer: a float32 Jacobian whose rows have 0 in their convex hull. The
    dual cone is then the orthogonal complement of the rows, so the projection of any g_i is
    0 (to float32 rounding), never the unprojected Σ g_i."""
    for seed in range(20):
        g = np.random.default_rng(seed)
        a = g.standard_normal((3, 100))
        c = g.random(3) + 0.1
        jac = np.vstack([a, -(c @ a)]).astype(np.float32).astype(np.float64)
        gram32 = (jac.astype(np.float32) @ jac.T.astype(np.float32)).astype(np.float64)
        prepared = Gram.of(gram32, eps=float(np.finfo(np.float32).eps))
        v = lower_bounded_qps(prepared, np.eye(4)).sum(axis=0)
        update = jac.T @ v
        scale = np.linalg.norm(jac, axis=1) * (np.abs(v) * np.linalg.norm(jac, axis=1)).sum()
        assert np.all(jac @ update >= -1e-5 * scale)  # float32 rounding, not a −0.95 cosine
        assert np.linalg.norm(update) <= 1e-4 * np.linalg.norm(jac.sum(axis=0))


def test_rank_is_truncated_at_the_precision_of_the_gram() -> None:
    rng = np.random.default_rng(1)
    jac = rng.standard_normal((4, 3))  # rank 3
    gram = jac @ jac.T + 1e-9 * np.eye(4)  # float32-level noise on a singular G
    assert Gram.of(gram).factor.shape[0] == 4  # float64: 1e-9 is information
    assert Gram.of(gram, eps=float(np.finfo(np.float32).eps)).factor.shape[0] == 3


# ---------------------------------------------------------------------------- verification


def test_nnls_violation_is_about_one_at_an_optimum_and_large_elsewhere() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 9)), rng.standard_normal(6)
    x = active_set_nnls(a, b)
    assert nnls_violation(a, b, x) <= _nnls.KKT_RTOL
    assert nnls_violation(a, b, x + 1e-3) > 1e6


@pytest.mark.parametrize("shape", [(4, 4), (6, 9), (9, 6), (3, 12), (30, 30)])
def test_own_active_set_nnls_matches_scipy(shape: tuple[int, int]) -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal(shape)
        if seed % 2:  # duplicated and zero columns
            a[:, 1] = a[:, 0]
            a[:, -1] = 0.0
        b = rng.standard_normal(shape[0])
        x = active_set_nnls(a, b)
        assert x.min() >= 0 and nnls_violation(a, b, x) <= _nnls.KKT_RTOL
        ref = _nnls._scipy_nnls(a, b)
        assert ref is not None
        res, res_ref = np.linalg.norm(a @ x - b), np.linalg.norm(a @ ref - b)
        assert res <= res_ref + 1e-12 * (1 + res_ref)


@pytest.mark.parametrize("bad", ["none", "garbage"])
def test_a_failing_first_solver_falls_back_to_the_active_set_method(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """scipy's nnls giving up or answering wrongly is caught by the KKT check; the answer then
    comes from the module's own Lawson–Hanson, still the exact optimum, with no warning."""
    wrong = {"none": lambda a, b: None, "garbage": lambda a, b: np.ones(a.shape[1])}[bad]
    monkeypatch.setattr(_nnls, "_scipy_nnls", wrong)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        for name, t, p, seed in [c for c in cases() if c[1] <= 5]:
            gram = gram_of(name, t, p, seed)
            check_simplex(gram, np.zeros(t), simplex_qp(gram))
            check_lower_bounded(gram, np.ones(t), lower_bounded_qp(gram, np.ones(t)))


def test_when_every_solver_fails_the_answer_comes_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_nnls, "_scipy_nnls", lambda a, b: np.ones(a.shape[1]))
    monkeypatch.setattr(_nnls, "active_set_nnls", lambda a, b: np.full(a.shape[1], 2.0))
    with pytest.warns(SolverWarning, match="dual-cone QP: no solver met the KKT conditions"):
        lower_bounded_qp(gram_of("random", 4, 6, 0), np.ones(4))


@pytest.mark.parametrize("forced_fallback", [False, True])
@pytest.mark.parametrize("t", [13, 30])
def test_many_tasks_near_stationarity_are_exact(
    monkeypatch: pytest.MonkeyPatch, t: int, forced_fallback: bool
) -> None:
    """T above the old enumeration limit (12), weakly stationary rows: every answer meets the
    KKT conditions of the problem it solves, and the dual-cone projections never conflict;
    also when every answer comes from the module's own active-set method."""
    if forced_fallback:
        monkeypatch.setattr(_nnls, "_scipy_nnls", lambda a, b: None)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((t - 1, 3 * t))
        jac = np.vstack([a, -(rng.random(t - 1) + 0.1) @ a + 1e-4 * rng.standard_normal(3 * t)])
        gram = jac @ jac.T
        p = Gram.of(gram)
        lowers = np.eye(t)
        vs = lower_bounded_qps(p, lowers)
        for u, v in zip(lowers, vs, strict=True):
            assert lower_bounded_kkt_violation(p.cosine, p.d * (v - u) + p.d * u, p.d * u) <= 1e-9
            assert (gram @ v).min() >= -1e-10 * gram.diagonal().max() * np.abs(v).sum()
        alpha = simplex_qp(p)
        assert simplex_kkt_violation(p.cosine, p.d * alpha / (p.d * alpha).sum(), 0 * alpha) < 1
        check_upgrad_update_does_not_conflict(jac, vs.sum(axis=0))


def check_upgrad_update_does_not_conflict(jac: np.ndarray, alpha: np.ndarray) -> None:
    norms = np.linalg.norm(jac, axis=1)
    update = jac.T @ alpha
    assert np.all(jac @ update >= -1e-9 * norms * (np.abs(alpha) * norms).sum())


# ---------------------------------------------------------------------------- independent solver


def slsqp_lower_bounded(gram: np.ndarray, lower: np.ndarray) -> float:
    res = minimize(
        lambda v: 0.5 * v @ gram @ v,
        lower + 0.1,
        jac=lambda v: gram @ v,
        bounds=[(u, None) for u in lower],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return float(res.fun)


def slsqp_simplex(gram: np.ndarray, shift: np.ndarray) -> float:
    t = gram.shape[0]
    res = minimize(
        lambda a: 0.5 * (a + shift) @ gram @ (a + shift),
        np.full(t, 1.0 / t),
        jac=lambda a: gram @ (a + shift),
        bounds=[(0.0, None)] * t,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(t)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return float(res.fun)


@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_values_agree_with_scipy_slsqp(name: str) -> None:
    """An independent solver (SLSQP) on the degenerate families, T = 7: mtlkit's value is never
    worse than SLSQP's beyond SLSQP's own accuracy."""
    t = 7
    for seed in range(6):
        gram = degenerate_gram(name, t, 9, seed, seed % t)
        gram = gram / gram.diagonal().max()
        shift = np.full(t, 0.2)
        ours = 0.5 * (simplex_qp(gram, shift) + shift) @ gram @ (simplex_qp(gram, shift) + shift)
        assert ours <= slsqp_simplex(gram, shift) + 1e-9
        for lower in (np.eye(t)[0], np.ones(t)):
            v = lower_bounded_qp(gram, lower)
            assert 0.5 * v @ gram @ v <= slsqp_lower_bounded(gram, lower) + 1e-9


def test_values_agree_with_quadprog() -> None:
    """The same check against quadprog (Goldfarb–Idnani; the ``bench`` extra), where G is
    made positive definite by a ridge small enough not to matter at the tolerance."""
    quadprog = pytest.importorskip("quadprog")
    t = 6
    for name in sorted(DEGENERATE):
        for seed in range(4):
            gram = degenerate_gram(name, t, 8, seed, seed % t)
            gram = gram / gram.diagonal().max()
            lower = np.ones(t)
            ridge = gram + 1e-10 * np.eye(t)
            # quadprog: min ½xᵀGx − aᵀx s.t. Cᵀx ≥ b
            x = quadprog.solve_qp(ridge, np.zeros(t), np.eye(t), lower)[0]
            v = lower_bounded_qp(gram, lower)
            assert 0.5 * v @ gram @ v <= 0.5 * x @ gram @ x + 1e-8


# ---------------------------------------------------------------------------- α-fair


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", ["random", "dominant_norm", "nearly_collinear"])
def test_alpha_fair_equation_holds(alpha: float, name: str) -> None:
    gram = gram_of(name, 5, 20, 3)
    beta = alpha_fair_weights(gram, alpha)
    assert beta.min() > 0
    np.testing.assert_allclose((gram @ beta) * beta ** (1 / alpha), 1.0, rtol=1e-10)


def test_alpha_fair_drops_zero_rows_and_stationary_points() -> None:
    gram = gram_of("zero_row", 4, 10, 0)
    beta = alpha_fair_weights(gram)
    assert beta[-1] == 0
    np.testing.assert_allclose((gram @ beta)[:-1] * beta[:-1], 1.0, rtol=1e-10)
    # centred rows: 0 lies in the convex hull, no direction helps every task
    np.testing.assert_array_equal(alpha_fair_weights(gram_of("conflicting", 4, 10, 0)), 0.0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("distance", [1e-1, 1e-2, 1e-3, 1e-4, 1e-6])
def test_alpha_fair_converges_near_pareto_stationarity(alpha: float, distance: float) -> None:
    """Close to a Pareto-stationary point (at a relative distance δ) the weights grow like a
    power of 1/δ and Gβ cancels. Newton's method still converges to the rounding level of the
    equation, without a warning. Down to δ = 1e-3 reordering the tasks changes the update Jᵀβ
    by less than 1e-8 relative; closer, float64 itself determines it only to about ε/δ²."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((4, 12))
        row = -(rng.random(4) + 0.1) @ a
        jac = np.vstack([a, row + distance * np.linalg.norm(row) * rng.standard_normal(12)])
        perm = rng.permutation(5)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SolverWarning)
            beta = alpha_fair_weights(jac @ jac.T, alpha)
            beta_perm = alpha_fair_weights(jac[perm] @ jac[perm].T, alpha)
        assert beta.min() > 0
        update, update_perm = jac.T @ beta, jac[perm].T @ beta_perm
        if distance >= 1e-3:
            assert np.linalg.norm(update - update_perm) <= 1e-8 * np.linalg.norm(update)
        if alpha == 1.0 and distance >= 1e-3:  # Nash-MTL: g_iᵀd = 1/β_i, so ‖d‖² = T
            assert np.linalg.norm(update) ** 2 == pytest.approx(5.0, rel=1e-8)


def test_accurate_residual_recovers_cancelled_digits() -> None:
    """Mx − b where Mx and b agree to about 10 digits: the compensated product matches exact
    rational arithmetic to a few units of the result; the plain product does not."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6)) * 1e4
    x = rng.standard_normal(6)
    rhs = m @ x * (1 + 1e-10)
    exact = [
        float(sum(Fraction(a) * Fraction(b) for a, b in zip(row, x, strict=True)) - Fraction(r))
        for row, r in zip(m, rhs, strict=True)
    ]
    np.testing.assert_allclose(accurate_residual(m, x, rhs), exact, rtol=1e-14)
    assert np.max(np.abs(m @ x - rhs - exact) / np.abs(exact)) > 1e-10


def test_batched_verification_checks_each_column_and_re_solves_only_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((7, 7)), rng.standard_normal((7, 5))
    exact = np.stack([active_set_nnls(a, b[:, k]) for k in range(5)], axis=1)
    assert np.all(_nnls.nnls_violations(a, b, exact) <= _nnls.KKT_RTOL)
    off = exact.copy()
    off[:, 1] += 1e-3  # one column off its optimum: only it fails
    assert list(_nnls.nnls_violations(a, b, off) > 1e6) == [False, True, False, False, False]
    calls = []
    original = _nnls._scipy_nnls

    def wrong_on_third(a_: np.ndarray, b_: np.ndarray) -> np.ndarray | None:
        calls.append(1)
        if np.array_equal(b_, b[:, 2]):
            return np.ones(a_.shape[1])  # fails the KKT check
        return original(a_, b_)

    monkeypatch.setattr(_nnls, "_scipy_nnls", wrong_on_third)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        x = _nnls.verified_nnls_many(a, b)
    assert len(calls) == 6  # five solves, and the third once more in the fallback
    for k in range(5):
        assert nnls_violation(a, b[:, k], x[:, k]) <= _nnls.KKT_RTOL
        np.testing.assert_allclose(a @ x[:, k], a @ exact[:, k], atol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 41])
def test_accurate_residual_is_exact_to_rounding_at_every_size(n: int) -> None:
    """The pairwise compensated sum against exact rational arithmetic, for odd and even term
    counts and entries spread over 16 orders of magnitude, with Mx and b agreeing to about 13
    digits: the result is the exact residual rounded, to a few units of rounding."""
    rng = np.random.default_rng(n)
    m = rng.standard_normal((n, n)) * 10.0 ** rng.integers(-8, 8, (n, n))
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-4, 4, n)
    exact_mx = [sum(Fraction(a) * Fraction(b) for a, b in zip(row, x, strict=True)) for row in m]
    rhs = np.array([float(v) for v in exact_mx]) * (1 + 1e-13 * rng.standard_normal(n))
    exact = np.array([float(v - Fraction(r)) for v, r in zip(exact_mx, rhs, strict=True)])
    got = accurate_residual(m, x, rhs)
    np.testing.assert_allclose(got, exact, rtol=1e-14, atol=0.0)


def _hull_stationary(p: Gram) -> bool:
    """The stationarity test by the hull QP alone (the reference for the shortcut in
    :func:`mtlkit.weighting._fair.stationary`)."""
    n = len(p.live)
    if n == 0:
        return True
    unit = Gram.of(p.cosine, p.eps)
    hull = simplex_qp(unit)
    return float(hull @ unit.matrix @ hull) <= 10.0 * n * p.eps


@pytest.mark.parametrize("seed", range(6))
def test_stationary_shortcut_agrees_with_the_hull_qp(seed: int) -> None:
    """Random, agreeing (a shared offset: the shortcut decides), conflicting (0 in the hull),
    rank-deficient, duplicate and zero rows, T = 1: the same decision as the hull QP."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(2, 20))
    offset = rng.standard_normal(12)
    jacobians = [
        rng.standard_normal((t, 12)),
        rng.standard_normal((t, 12)) + 3.0 * offset,
        np.vstack([offset, -offset, rng.standard_normal((t - 2, 12))]),
        rng.standard_normal((t, 2)),
        np.vstack([offset, offset, 2.0 * offset]),
        np.vstack([rng.standard_normal((t, 12)) + 3.0 * offset, np.zeros((1, 12))]),
        rng.standard_normal((1, 12)),
    ]
    for jac in jacobians:
        p = Gram.of(jac @ jac.T)
        assert stationary(p) == _hull_stationary(p)
    assert not stationary(Gram.of(jacobians[1] @ jacobians[1].T))
    assert stationary(Gram.of(jacobians[2] @ jacobians[2].T))


def _nnls_problems() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, A, B) with K ≥ BATCHED_FROM right-hand sides: full rank, rank-deficient (more
    columns than rows, duplicate columns, a zero column), nearly collinear columns, one
    variable, and UPGrad's own problems (A = R, b_k = −R D e_k) on a random Gram matrix."""
    rng = np.random.default_rng(7)
    k = max(_nnls.BATCHED_FROM, 12)
    full = rng.standard_normal((30, 20))
    wide = rng.standard_normal((6, 10))
    duplicate = rng.standard_normal((12, 8))
    duplicate[:, 1] = duplicate[:, 0]
    zero = rng.standard_normal((12, 8))
    zero[:, 3] = 0.0
    collinear = np.outer(rng.standard_normal(15), np.ones(6)) + 1e-9 * rng.standard_normal((15, 6))
    one = rng.standard_normal((5, 1))
    jac = rng.standard_normal((25, 40))
    p = Gram.of(jac @ jac.T)
    upgrad_b = -(p.factor @ (p.d[:, None] * np.eye(25)))
    out = [
        (name, a, rng.standard_normal((a.shape[0], k)))
        for name, a in [
            ("full", full),
            ("wide", wide),
            ("duplicate", duplicate),
            ("zero", zero),
            ("collinear", collinear),
            ("one", one),
        ]
    ]
    out.append(("upgrad", p.factor, upgrad_b))
    return out


@pytest.mark.parametrize(
    ("name", "a", "b"), _nnls_problems(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_batched_nnls_agrees_with_the_per_column_solvers(
    name: str, a: np.ndarray, b: np.ndarray
) -> None:
    """verified_nnls_many (batched first) against Lawson–Hanson column by column: every
    column meets its KKT conditions and gives the same Ax (unique even where x is not)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverWarning)
        x = _nnls.verified_nnls_many(a, b)
    assert np.all(_nnls.nnls_violations(a, b, x) <= _nnls.KKT_RTOL)
    for k in range(b.shape[1]):
        reference = active_set_nnls(a, b[:, k])
        scale = np.linalg.norm(a) * (
            np.linalg.norm(a) * np.abs(reference).max() + np.abs(b[:, k]).max()
        )
        np.testing.assert_allclose(a @ x[:, k], a @ reference, atol=1e-9 * max(scale, 1e-300))


def test_batched_nnls_settles_on_full_rank_problems() -> None:
    """The batched active-set method itself (not a fallback) solves well-posed problems: the
    unique minimiser of Lawson–Hanson, to rounding; a column that cannot settle in the
    iterations allowed is NaN, never an unverified point."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((40, 16))
    x = _nnls.batched_nnls(a, b)
    reference = np.stack([active_set_nnls(a, b[:, k]) for k in range(16)], axis=1)
    np.testing.assert_allclose(x, reference, atol=1e-10)
    assert np.all(_nnls.nnls_violations(a, b, np.clip(x, 0.0, None)) <= _nnls.KKT_RTOL)
    unsettled = _nnls.batched_nnls(a, b, max_iter=1)
    # a column whose optimal support is not its first free set {q > 0} needs more than one
    # iteration (a free set that repeats at once satisfies the KKT conditions)
    moved = np.any((reference > 0) != (a.T @ b > 0), axis=0)
    assert moved.any()
    np.testing.assert_allclose(unsettled[:, ~moved], reference[:, ~moved], atol=1e-10)
    # non-negative A and b = A x⁺ with x⁺ > 0: q > 0 everywhere, the first free set is the
    # support, one iteration settles it
    positive = np.abs(a)
    optimum = rng.random((30, 4)) + 0.5
    at_once = _nnls.batched_nnls(positive, positive @ optimum, max_iter=1)
    np.testing.assert_allclose(at_once, optimum, rtol=1e-9)
    assert np.all(np.isnan(unsettled[:, moved]))


def test_many_nnls_repairs_what_the_batch_gets_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns the batched method returns wrong or unsettled (NaN) go to scipy and are
    verified like the others."""
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((20, 10)), rng.standard_normal((20, 9))
    original = _nnls.batched_nnls

    def broken(a_: np.ndarray, b_: np.ndarray, max_iter: int | None = None) -> np.ndarray:
        x = original(a_, b_)
        x[:, 0] += 1.0  # off its optimum
        x[:, 1] = np.nan  # unsettled
        return x

    monkeypatch.setattr(_nnls, "batched_nnls", broken)
    x = _nnls.verified_nnls_many(a, b)
    assert np.all(_nnls.nnls_violations(a, b, x) <= _nnls.KKT_RTOL)
