"""Exact solvers for the small dense problems of gradient-based MTL methods, on G = J Jᵀ.

Every problem here lives in task space (T variables) and is stated on the Gram matrix G of the
task gradients, a symmetric positive semi-definite matrix that is often singular or badly
conditioned: a zero task gradient (a converged task, a batch without its labels), duplicated or
nearly collinear gradients, T > P, norms that differ by orders of magnitude.

- :func:`simplex_qp` — ``argmin_{α ∈ Δ} ½ (α + s)ᵀ G (α + s)``, Δ the probability simplex
  (MGDA with s = 0, CAGrad's inner problem with s = τ·1);
- :func:`lower_bounded_qp` — ``argmin_{v ≥ u} ½ vᵀ G v``, the dual of the projection of uᵀJ onto
  the dual cone {x : Jx ≥ 0} (UPGrad, DualProj); :func:`lower_bounded_qps` solves it for many
  lower bounds that share one G;
- :func:`alpha_fair_weights` — the positive solution β of Gβ = β^(−1/a) (FairGrad; a = 1 is
  Nash-MTL's (Gβ) ⊙ β = 1), by Newton's method.

How singular inputs are handled, by construction (:class:`Gram`):

1. G is taken in float64 whatever its dtype, symmetrised and scaled by its largest diagonal
   entry. ``eps`` is the machine epsilon of the dtype G was *computed* in (float32 for a float32
   Jacobian): it sets how many of G's digits are information.
2. A task whose gradient norm is at most ``ZERO_NORM`` (1e-10) times the largest is a
   *zero-gradient task*. It has no direction, so it is taken out of the problem; each solver
   states the weight it gets (its lower bound for the QPs, weight 0 in the α-fair problem, an
   equal share of the mass the simplex problem leaves to zero gradients). The decision depends
   on G's diagonal only, so it cannot depend on the order of the tasks.
3. The other tasks are solved in the cosine matrix C = D⁻¹GD⁻¹ (D = diag ‖g_i‖), whose unit
   diagonal keeps tasks of very different norms accurate. Its eigenvalues at or below
   ``RANK_RTOL · n · eps · λ_max`` are rounding, not information: they (and negative ones) are
   set to 0, giving the PSD matrix C_r = RᵀR of exact rank r that every solver solves on. Exact
   duplicates, parallel gradients and T > P thus become exact rank deficiency.

The QPs are reduced to non-negative least squares (NNLS) on R, solved by Lawson & Hanson's
active-set algorithm (1974, "Solving Least Squares Problems", ch. 23), which terminates finitely
and needs no positive definiteness:

- lower bound: with μ = D(v − u) ≥ 0, ½vᵀGv ∝ ‖R(μ + Du)‖², an NNLS in μ;
- simplex: in β = Dα the constraint is wᵀβ = 1 with w = 1/d and the objective is ‖Cβ‖² with
  columns c_i = R e_i + w_i·RDs; minimise ``‖Cy‖² + (wᵀy − 1)²`` over y ≥ 0 (Lawson & Hanson's
  least-distance trick); y* = β*/(1 + ‖Cβ*‖²), so β* = y*/wᵀy* exactly.

Every NNLS answer is verified against its KKT conditions (the natural residual
max_j |min(x_j, ∇_j)|, relative to the problem's scale). scipy's ``nnls`` is tried first; an
answer that fails the check is solved again by this module's own Lawson–Hanson implementation
(:func:`active_set_nnls`), which is correct for every T; if that fails too (never seen), the
better of the two is returned with a :class:`SolverWarning` that names the violation. No point
is returned unverified and silently.

One module of about 500 lines on purpose: the preparation of G, the solvers and their KKT
verification are one verified unit (tests/weighting/test_solvers_qp.py), read together.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from mtlkit.errors import TaskDataError

#: a task gradient this many times smaller than the largest one is a zero gradient
ZERO_NORM = 1e-10
#: eigenvalues of the cosine matrix at or below RANK_RTOL · n · eps · λ_max are rounding
RANK_RTOL = 10.0
#: KKT (natural residual) tolerance of an NNLS answer, in units of (m + n) · ε64 · its scale
KKT_RTOL = 1e3
#: float64 machine epsilon, the default precision of G
EPS64 = float(np.finfo(np.float64).eps)


class SolverWarning(RuntimeWarning):
    """A solver could not verify its answer (the KKT check failed for every algorithm)."""


def gram_eps(dtype: torch.dtype) -> float:
    """The machine epsilon of the dtype a Gram matrix was computed in (float64's at least)."""
    return max(float(torch.finfo(dtype).eps), EPS64) if dtype.is_floating_point else EPS64


# ---------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class Gram:
    """G prepared once for the solvers (see the module docstring, steps 1-3).

    ``live`` indexes the tasks with a non-zero gradient, ``zero`` the others; ``d`` holds the
    live gradient norms (of G / ``scale``); ``factor`` is R (r × n, n = len(live)) with
    RᵀR = C_r, the rank-truncated cosine matrix of the live tasks.
    """

    matrix: np.ndarray  # G / scale, symmetric
    scale: float
    live: np.ndarray
    zero: np.ndarray
    d: np.ndarray
    factor: np.ndarray
    eps: float

    @classmethod
    def of(cls, gram: np.ndarray, eps: float = EPS64) -> Gram:
        g = np.asarray(gram, dtype=np.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"the Gram matrix must be square, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError("the Gram matrix has NaN or inf entries")
        g = (g + g.T) / 2
        t = g.shape[0]
        diag = np.clip(np.diag(g), 0.0, None)
        scale = float(np.max(diag, initial=0.0))
        if scale > 0.0:
            g = g / scale
            diag = diag / scale
        is_live = diag > ZERO_NORM**2 if scale > 0.0 else np.zeros(t, dtype=bool)
        live, zero = np.flatnonzero(is_live), np.flatnonzero(~is_live)
        d = np.sqrt(diag[live])
        cosine = g[np.ix_(live, live)] / np.outer(d, d)
        return cls(g, scale, live, zero, d, truncated_factor(cosine, eps), eps)

    def rescaled(self, n: np.ndarray) -> Gram:
        """G of the gradients g_i / n_i, prepared with the same precision."""
        return Gram.of(self.matrix / np.outer(n, n), self.eps)

    @property
    def size(self) -> int:
        return self.matrix.shape[0]

    @property
    def cosine(self) -> np.ndarray:
        """C_r = RᵀR, the matrix the solvers solve on (live tasks only)."""
        return self.factor.T @ self.factor


def truncated_factor(cosine: np.ndarray, eps: float) -> np.ndarray:
    """R (r × n) with RᵀR the PSD matrix ``cosine`` without its rounding-level eigenvalues."""
    n = cosine.shape[0]
    if n == 0:
        return np.zeros((0, 0))
    eigenvalues, vectors = np.linalg.eigh(cosine)
    top = max(float(eigenvalues[-1]), 0.0)
    keep = eigenvalues > RANK_RTOL * n * eps * top
    return np.sqrt(eigenvalues[keep])[:, None] * vectors[:, keep].T


def cosine_pinv_ones(p: Gram) -> tuple[np.ndarray, np.ndarray]:
    """C⁺1 and an orthonormal basis (columns) of the null space of C, for the live tasks.

    A linear system on C (IMTL-G, ConFIG: "the same cosine with every task gradient") is read
    from G's digits: an eigen-direction whose eigenvalue is below √(n·eps)·λ_max would carry a
    relative error above √(n·eps) into the answer (the eigenvalue itself is known only to
    n·eps·λ_max), so it counts as exact collinearity, part of the null space. The solution set
    of such a system is then explicit, and a least-norm choice in it is canonical: the same for
    every task order, and unchanged when every gradient is scaled alike.
    """
    n = len(p.live)
    if n == 0:
        return np.zeros(0), np.zeros((0, 0))
    eigenvalues, vectors = np.linalg.eigh(p.cosine)
    top = max(float(eigenvalues[-1]), 0.0)
    keep = eigenvalues > math.sqrt(n * p.eps) * top
    kept = vectors[:, keep]
    along = kept.T @ np.ones(n)  # 1 in the kept eigenbasis; rounding-level parts are 0
    along[np.abs(along) <= RANK_RTOL * n * p.eps * math.sqrt(n)] = 0.0
    return kept @ (along / eigenvalues[keep]), vectors[:, ~keep]


# ---------------------------------------------------------------------------- verified NNLS


def nnls_violation(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """How far x is from the optimum of ``min_{x ≥ 0} ‖Ax − b‖``, relative to the problem's
    scale: the natural residual max_j |min(x_j, ∇_j)| with ∇ = Aᵀ(Ax − b), over (m + n)·ε64
    times ‖A‖_F(‖A‖_F‖x‖_∞ + ‖b‖_∞). An exact optimum gives about 1; :data:`KKT_RTOL` passes."""
    if x.size == 0:
        return 0.0
    grad = a.T @ (a @ x - b)
    residual = float(np.max(np.abs(np.minimum(x, grad))))
    norm_a = float(np.linalg.norm(a))
    size = norm_a * (norm_a * float(np.max(np.abs(x))) + float(np.max(np.abs(b), initial=0.0)))
    unit = (sum(a.shape) + 1) * EPS64 * max(size, np.finfo(np.float64).tiny)
    return residual / unit


def _scipy_nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """scipy's Lawson–Hanson NNLS with a generous iteration cap; None if it gives up."""
    try:
        return nnls(a, b, maxiter=50 * a.shape[1] + 100)[0]
    except RuntimeError:
        return None


def active_set_nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin_{x ≥ 0} ‖Ax − b‖`` by Lawson & Hanson's active-set algorithm (NNLS, ch. 23).

    1. start from x = 0 with every variable at its bound (the active set);
    2. while some bound variable j has a positive descent direction w_j = (Aᵀ(b − Ax))_j above
       rounding: free the largest whose column is independent of the free ones (on a dependent
       column w_j is 0 in exact arithmetic, so a positive value is rounding);
    3. solve least squares on the free columns; if a free variable would turn ≤ 0, move toward
       the new point as far as feasibility allows, return the variables that hit 0 to their
       bound, and solve again.

    Least squares on the free set uses ``lstsq``, so a rank-deficient A (duplicated columns,
    more columns than rows) is fine.
    """
    m, n = a.shape
    x = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    norm_a = float(np.linalg.norm(a))
    col_norms = np.linalg.norm(a, axis=0)
    usable = col_norms > EPS64 * norm_a
    for _ in range(max_iter or 3 * n + 10):
        residual = b - a @ x
        w = a.T @ residual
        tol = 10 * (m + n) * EPS64 * norm_a * (norm_a * float(np.abs(x).sum()) + np.abs(b).sum())
        entering = None
        for j in np.argsort(-w):
            if w[j] <= tol:
                break
            if free[j] or not usable[j]:
                continue
            if free.any():  # the part of column j outside the span of the free columns
                basis = a[:, free]
                coef = np.linalg.lstsq(basis, a[:, j], rcond=None)[0]
                if np.linalg.norm(a[:, j] - basis @ coef) <= 1e-10 * col_norms[j]:
                    continue
            entering = int(j)
            break
        if entering is None:
            break
        free[entering] = True
        for _ in range(3 * n + 10):
            z = np.zeros(n)
            z[free] = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
            if np.all(z[free] > 0):
                x = z
                break
            bad = free & (z <= 0)
            gap = x[bad] - z[bad]
            ratios = np.divide(x[bad], gap, out=np.zeros_like(gap), where=gap > 0)
            x = x + float(np.min(ratios)) * (z - x)
            free &= x > EPS64 * max(float(np.max(np.abs(x))), 1.0)
            x[~free] = 0.0
    return x


def verified_nnls(a: np.ndarray, b: np.ndarray, what: str = "NNLS") -> np.ndarray:
    """``argmin_{x ≥ 0} ‖Ax − b‖``, checked against its KKT conditions (see the module
    docstring); a :class:`SolverWarning` naming ``what`` if no algorithm passes the check."""
    tried: list[tuple[float, np.ndarray]] = []
    for solve in (_scipy_nnls, active_set_nnls):
        x = solve(a, b)
        if x is None or not np.all(np.isfinite(x)):
            continue
        x = np.clip(x, 0.0, None)
        violation = nnls_violation(a, b, x)
        if violation <= KKT_RTOL:
            return x
        tried.append((violation, x))
    if not tried:
        tried.append((math.inf, np.zeros(a.shape[1])))
    violation, x = min(tried, key=lambda pair: pair[0])
    warnings.warn(
        f"{what}: no solver met the KKT conditions (best natural residual {violation:.3g} "
        f"units of rounding, tolerance {KKT_RTOL:g}); the best answer is used",
        SolverWarning,
        stacklevel=3,
    )
    return x


# ---------------------------------------------------------------------------- the QPs


def simplex_qp(gram: np.ndarray | Gram, shift: np.ndarray | None = None) -> np.ndarray:
    """``argmin_{α ∈ Δ} ½ (α + s)ᵀ G (α + s)`` over the probability simplex Δ.

    With ``shift`` s = 0 this is the min-norm element of the convex hull of the task gradients
    (MGDA's problem). Zero-gradient tasks leave the objective unchanged, so the mass they take
    is one variable, shared equally among them. When G is singular the minimiser need not be
    unique; the value and Gα are. A zero G returns the uniform weights.
    """
    p = gram if isinstance(gram, Gram) else Gram.of(gram)
    t = p.size
    s = np.zeros(t) if shift is None else np.asarray(shift, dtype=np.float64)
    if len(p.live) == 0:
        return np.full(t, 1.0 / t)
    r, d = p.factor, p.d
    shifted = r @ (d * s[p.live])  # R D s: the shift, in the factor's coordinates
    w = 1.0 / d
    columns = [r + np.outer(shifted, w)]  # R e_i + w_i R D s
    weights = [w]
    if len(p.zero):  # one variable for the mass on zero gradients: its column is R D s
        columns.append(shifted[:, None])
        weights.append(np.ones(1))
    a = np.vstack([np.hstack(columns), np.concatenate(weights)[None, :]])
    b = np.zeros(a.shape[0])
    b[-1] = 1.0
    y = verified_nnls(a, b, "simplex QP")
    n = len(p.live)
    beta = y / float(np.concatenate(weights) @ y)
    alpha = np.zeros(t)
    alpha[p.live] = beta[:n] / d
    if len(p.zero):
        alpha[p.zero] = beta[n] / len(p.zero)
    return alpha


def lower_bounded_qp(gram: np.ndarray | Gram, lower: np.ndarray) -> np.ndarray:
    """``argmin_{v ≥ u} ½ vᵀ G v`` for the lower bound ``lower`` = u.

    Jᵀv is then the projection of uᵀJ onto the dual cone {x : Jx ≥ 0} (Quinton & Rey 2024,
    proposition 1): Gv ≥ 0 means every task gradient has a non-negative inner product with it.
    A zero-gradient task keeps its lower bound, v_i = u_i (no extra weight: any v_i ≥ u_i gives
    the same update, and this is the least).
    """
    u = np.asarray(lower, dtype=np.float64)
    return lower_bounded_qps(gram, u[None, :])[0]


def lower_bounded_qps(gram: np.ndarray | Gram, lowers: np.ndarray) -> np.ndarray:
    """:func:`lower_bounded_qp` for each row u_k of the K × T array ``lowers``, one G for all.

    G is prepared and factorised once; each row is then one verified NNLS on the shared factor.
    """
    p = gram if isinstance(gram, Gram) else Gram.of(gram)
    u = np.asarray(lowers, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != p.size:
        raise ValueError(f"the lower bounds must have shape (K, {p.size}), got {u.shape}")
    v = u.copy()
    if len(p.live) == 0 or p.factor.shape[0] == 0:
        return v
    r, d = p.factor, p.d
    rhs = -(r @ (d[:, None] * u[:, p.live].T))  # column k: −R D u_k
    for k in range(len(u)):
        mu = verified_nnls(r, rhs[:, k], "dual-cone QP")
        v[k, p.live] += mu / d
    return v


def simplex_kkt_violation(gram: np.ndarray, alpha: np.ndarray, shift: np.ndarray) -> float:
    """The KKT violation of α for ``min_{α∈Δ} ½(α+s)ᵀG(α+s)`` on ``gram`` as given: with
    g = G(α + s) and level ν = min_i g_i, the natural residual max_i |min(α_i, g_i − ν)|, plus
    infeasibility (α < 0, Σα ≠ 1). 0 at an exact optimum."""
    grad = gram @ (alpha + shift)
    level = float(np.min(grad))
    return max(
        float(np.max(np.abs(np.minimum(alpha, grad - level)))),
        float(max(0.0, -np.min(alpha))),
        abs(float(np.sum(alpha)) - 1.0),
    )


def lower_bounded_kkt_violation(gram: np.ndarray, v: np.ndarray, lower: np.ndarray) -> float:
    """The KKT violation of v for ``min_{v ≥ u} ½vᵀGv`` on ``gram`` as given: the natural
    residual max_i |min(v_i − u_i, (Gv)_i)|, plus infeasibility (v < u). 0 at an exact optimum."""
    grad = gram @ v
    return max(
        float(np.max(np.abs(np.minimum(v - lower, grad)))),
        float(max(0.0, np.max(lower - v))),
    )


# ---------------------------------------------------------------------------- α-fair weights


def stationary(p: Gram) -> bool:
    """Whether 0 is in the convex hull of the live unit gradients, to G's precision: the squared
    min-norm of that hull is at most RANK_RTOL · n · eps (the rounding level of C)."""
    n = len(p.live)
    if n == 0:
        return True
    unit = Gram.of(p.cosine, p.eps)
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
    """``m @ x − rhs`` as accurately as if computed in twice the working precision (Ogita,
    Rump & Oishi 2005, "Accurate sum and dot product", algorithm Dot2), then rounded once.

    Near a Pareto-stationary point the α-fair weights are large and Mx nearly cancels rhs;
    a plain product loses the digits Newton's method needs there.
    """
    prods, errs = _two_product(m, x[None, :])
    total, comp = prods[:, 0], errs[:, 0]
    for j in range(1, m.shape[1]):
        total, err = _two_sum(total, prods[:, j])
        comp = comp + err + errs[:, j]
    head, err = _two_sum(total, -rhs)
    return head + (err + comp)


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

    b = (c / len(d)) ** (1.0 / (1.0 + p))
    best, best_error, stalled = b, math.inf, 0
    for _ in range(max_iter):
        target = c * b ** (-p)
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


# ---------------------------------------------------------------------------- torch glue


def gram_to_numpy(gram: Tensor, method: object) -> Gram:
    """G prepared for the solvers (:class:`Gram`), with the precision of ``gram``'s dtype; a
    TaskDataError naming ``method`` if it is not finite."""
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.all(np.isfinite(g)):
        raise TaskDataError(f"{method}: the task gradients contain NaN or inf")
    return Gram.of(g, gram_eps(gram.dtype))


def weights_to_torch(weights: np.ndarray, like: Tensor) -> Tensor:
    """Task weights as a float64 tensor on ``like``'s device."""
    return torch.as_tensor(weights, dtype=torch.float64, device=like.device)
