"""α-fair weights (Nash-MTL, FairGrad): the positive solution of Gβ = β^(−1/a), by Newton's
method with residuals computed in twice the working precision.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from mtlkit.weighting._gram import EPS64, RANK_RTOL, Gram
from mtlkit.weighting._nnls import KKT_RTOL, SolverWarning
from mtlkit.weighting._qp import simplex_qp


def stationary(p: Gram) -> bool:
    """Whether 0 is in the convex hull of the live unit gradients, to G's precision: the squared
    min-norm of that hull is at most RANK_RTOL · n · eps (the rounding level of C)."""
    n = len(p.live)
    if n == 0:
        return True
    c_mat = p.cosine
    along = c_mat.sum(axis=1)  # C1: each unit gradient's inner product with their sum u
    total = float(along.sum())  # ‖u‖²
    least = float(np.min(along))
    # every point x = Σ λ_i u_i of the hull (λ ∈ Δ) has ⟨x, u⟩ ≥ min_i (C1)_i, so its squared
    # norm is at least (min_i (C1)_i)² / ‖u‖²: far above the threshold, the hull QP below
    # cannot decide otherwise (a factor 4 covers rounding)
    if total > 0 and least > 0 and least**2 / total > 4 * RANK_RTOL * n * p.eps:
        return False
    unit = Gram.of(c_mat, p.eps)
    hull = simplex_qp(unit)
    return float(hull @ unit.matrix @ hull) <= RANK_RTOL * n * p.eps


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b = s + err exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a · b = p + err exactly (Dekker's TwoProduct, with Veltkamp's split)."""
    p = a * b
    ca, cb = 134217729.0 * a, 134217729.0 * b  # 2^27 + 1
    ah, bh = ca - (ca - a), cb - (cb - b)
    al, bl = a - ah, b - bh
    return p, al * bl - (((p - ah * bh) - al * bh) - ah * bl)


def accurate_residual(m: np.ndarray, x: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``m @ x − rhs`` as accurately as if computed in twice the working precision, then
    rounded once: every product is split exactly (TwoProduct) and the n + 1 terms of each row
    are summed pairwise by TwoSum, whose rounding errors are collected and added at the end
    (Ogita, Rump & Oishi 2005, "Accurate sum and dot product": their Dot2, with the cascade
    over the terms replaced by a pairwise tree; the error bound keeps its form, with ⌈log₂ n⌉
    in place of n). Each tree level is one vectorised step over all rows, ⌈log₂(n + 1)⌉ in all.

    Near a Pareto-stationary point the α-fair weights are large and Mx nearly cancels rhs;
    a plain product loses the digits Newton's method needs there.
    """
    prods, errs = _two_product(m, x[None, :])
    terms = np.concatenate([prods, -rhs[:, None]], axis=1)
    comp = errs.sum(axis=1)
    while terms.shape[1] > 1:
        half = terms.shape[1] // 2
        total, err = _two_sum(terms[:, :half], terms[:, half : 2 * half])
        comp = comp + err.sum(axis=1)
        terms = (
            np.concatenate([total, terms[:, 2 * half :]], axis=1) if terms.shape[1] % 2 else total
        )
    out: np.ndarray = terms[:, 0] + comp
    return out


def alpha_fair_weights(
    gram: np.ndarray | Gram, alpha: float = 1.0, max_iter: int = 200
) -> np.ndarray:
    """The β > 0 with Gβ = β^(−1/a) for the fairness level a = ``alpha`` > 0.

    Written in the cosine matrix with β' = Dβ the equation is Cβ' = c ⊙ β'^(−p), p = 1/a,
    c_i = d_i^(p−1) (for Nash-MTL, a = 1, simply Cβ' = 1/β', so the weights do not depend on
    the gradient norms). β' is the unique minimiser of the strictly convex
    F(β') = ½β'ᵀCβ' − Σ_i c_i h(β'_i) with h'(β) = β^(−p) (h = log for p = 1), found by Newton's
    method on the symmetrically scaled system S(C + diag(p c β'^(−p−1)))S with S = diag(β')
    (bounded below by the identity for a = 1, so steps stay accurate when β' is large near a
    Pareto-stationary point), damped with a fraction-to-the-boundary rule and Armijo
    backtracking, until the relative step is at rounding level. The residual of the equation
    is computed in twice the working precision (:func:`accurate_residual`), so Newton's method
    converges on C as given even where Cβ' cancels; the equation must then hold to 1e-9
    relative, or to the level that rounding β' to float64 allows (close to a stationary point
    β' is so large that one unit in its last place moves Cβ' by more), or a
    :class:`SolverWarning` says it does not. That level, not the solver, limits how well the
    update is determined there: about ε/δ² relative at a distance δ from stationarity.

    A solution exists only when some direction d has Jd > 0 (Gordan): zero-gradient tasks cannot
    take part and get weight 0; and when 0 lies in the convex hull of the remaining unit
    gradients (to G's precision, see :func:`stationary`), no task can improve without another
    worsening, and all weights are 0.
    """
    p_ = gram if isinstance(gram, Gram) else Gram.of(gram)
    beta = np.zeros(p_.size)
    if len(p_.live) == 0 or stationary(p_):
        return beta
    c_mat, d = p_.cosine, p_.d
    p = 1.0 / alpha
    c = d ** (p - 1.0)

    def objective(b: np.ndarray) -> float:
        barrier = np.log(b) if p == 1.0 else b ** (1.0 - p) / (1.0 - p)
        return 0.5 * b @ c_mat @ b - float(c @ barrier)

    n, abs_c = len(d), np.abs(c_mat)
    b = (c / n) ** (1.0 / (1.0 + p))
    best, best_error, stalled = b, math.inf, 0
    for _ in range(max_iter):
        target = c * b ** (-p)
        grad = c_mat @ b - target
        # the plain residual is off by at most n·ε·(|C|β' + target) (Higham's γ_n bound); where
        # that is a millionth of it or less it is good for a Newton step, else (near the
        # solution, or where Cβ' cancels) it is computed in twice the working precision
        if not np.all(np.abs(grad) > 1e6 * n * EPS64 * (abs_c @ b + target)):
            grad = accurate_residual(c_mat, b, target)
        error = float(np.max(np.abs(grad) / target))
        if error < best_error:
            best, stalled = b, (stalled + 1 if error > best_error / 2 else 0)
            best_error = error
        else:
            stalled += 1
        if error <= 4 * EPS64 or stalled >= 4:
            break  # at rounding level, or no longer improving: rounding decides from here
        scaled = b[:, None] * c_mat * b[None, :] + np.diag(p * c * b ** (1.0 - p))
        z = np.linalg.solve(scaled, -b * grad)  # the Newton step, relative to β'
        step = b * z
        decrement = float(-grad @ step)
        size = min(1.0, 0.99 / float(np.max(-z))) if np.any(z < 0) else 1.0  # keep β' > 0
        if decrement > 1e-6:  # damped phase: backtrack until F decreases enough
            f0 = objective(b)
            while size > 1e-12 and objective(b + size * step) > f0 - 0.25 * size * decrement:
                size *= 0.5
            stalled = 0
        b = b + size * step
    b, error = best, best_error
    # β' itself is rounded: the residual cannot go below about ε·(|C| β')_i relative
    floor = float(np.max(len(d) * EPS64 * (np.abs(c_mat) @ b) * b**p / c))
    if not error <= max(1e-9, KKT_RTOL * floor):
        warnings.warn(
            f"α-fair weights: Newton's method stopped at a relative residual of {error:.3g}",
            SolverWarning,
            stacklevel=2,
        )
    beta[p_.live] = b / d
    return beta * p_.scale ** (-1.0 / (1.0 + p))
