"""Exact solvers for the small dense quadratic programs of gradient-based MTL methods.

Every problem here lives in task space (T variables, T ≤ a few dozen) and is stated on the
Gram matrix G = J Jᵀ of the task gradients, a symmetric positive semi-definite matrix that is
often singular or badly conditioned (a zero task gradient, nearly collinear gradients, P < T):

- :func:`simplex_qp` — ``argmin_{α ∈ Δ} ½ (α + s)ᵀ G (α + s)``, Δ the probability simplex.
  With s = 0 it is the min-norm point of the convex hull of the task gradients (MGDA); with
  s = τ·b it is CAGrad's inner problem.
- :func:`lower_bounded_qp` — ``argmin_{v ≥ u} ½ vᵀ G v``, the dual of the projection of uᵀJ onto
  the dual cone {x : Jx ≥ 0} (UPGrad, DualProj); :func:`lower_bounded_qps` solves it for many
  lower bounds u that share one G (UPGrad's T projections), factorising G once;
- :func:`alpha_fair_weights` — the positive solution β of Gβ = β^(−1/a) (FairGrad; a = 1 is
  Nash-MTL's (Gβ) ⊙ β = 1), the minimiser of a strictly convex function, by damped Newton.

The two QPs are solved exactly (up to rounding) by reduction to non-negative least squares,
solved by the Lawson & Hanson active-set algorithm (1974, "Solving Least Squares Problems", ch. 23),
which terminates finitely and needs no positive definiteness:

- write G = (RD)ᵀ(RD) with D = diag(√G_ii) and R from the eigendecomposition of the cosine
  matrix D⁻¹GD⁻¹ (eigenvalues clamped at 0; the diagonal scaling keeps tasks whose gradient
  norms differ by orders of magnitude accurate), so ½vᵀGv = ½‖RDv‖²;
- ``Dv = Du + λ, λ ≥ 0``: ``min ‖Rλ + RDu‖²`` is an NNLS problem in λ;
- the simplex problem in β = Dα has the constraint wᵀβ = 1 with w = 1/d, and objective
  ‖Cβ‖² with columns c_i = R e_i + RDs/d_i; minimise ``‖Cy‖² + (wᵀy − 1)²`` over y ≥ 0
  (Lawson & Hanson's least-distance trick): writing y = σβ with wᵀβ = 1 shows the minimiser
  is y* = β*/(1 + ‖Cβ*‖²), so β* = y*/wᵀy* exactly.

No regularisation is added and no iteration is stopped early. The answer is checked against the
KKT conditions of the original problem on G; in the rare case it fails them (NNLS iteration cap,
extreme rounding), the problem is solved by enumerating active sets (T ≤ 12), and otherwise the
NNLS answer is kept. Inputs are scaled by the largest diagonal entry of G first, so the
tolerances are relative, and a zero G returns a feasible point without dividing by zero.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from mtlkit.errors import TaskDataError

#: KKT tolerance, relative to the largest diagonal entry of G
KKT_TOL = 1e-9
#: largest T for which the enumeration fallback runs (2^T small linear solves)
ENUMERATION_MAX_T = 12


def _as_gram(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """G as a symmetric float64 matrix scaled to a unit largest diagonal, and the scale."""
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"the Gram matrix must be square, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("the Gram matrix has NaN or inf entries")
    g = (g + g.T) / 2
    scale = float(np.max(np.diag(g), initial=0.0))
    if scale <= 0.0:
        return np.zeros_like(g), 0.0
    return g / scale, scale


def _diagonal_scale(gram: np.ndarray) -> np.ndarray:
    """The task-gradient norms √G_ii (1 for a zero gradient): dividing G by them on both sides
    gives the cosine matrix, which keeps tasks of very different gradient norms accurate."""
    d = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    return np.where(d > 0, d, 1.0)


def gram_factor(gram: np.ndarray) -> np.ndarray:
    """A square R with RᵀR = G for a symmetric PSD ``gram`` (negative eigenvalues, which are
    rounding errors, are clamped to 0)."""
    eigenvalues, vectors = np.linalg.eigh(gram)
    return np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * vectors.T


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Lawson–Hanson NNLS with a generous iteration cap; None if the cap is hit."""
    try:
        return nnls(a, b, maxiter=50 * a.shape[1] + 100)[0]
    except RuntimeError:
        return None


# ---------------------------------------------------------------------------- KKT checks


def simplex_kkt_violation(gram: np.ndarray, alpha: np.ndarray, shift: np.ndarray) -> float:
    """How far α is from satisfying the KKT conditions of ``min_{α∈Δ} ½(α+s)ᵀG(α+s)``.

    With gradient g = G(α + s): g_i ≥ min over the support of g, with equality on the support;
    plus feasibility (α ≥ 0, Σα = 1). Returns the largest violation (0 at an exact optimum).
    """
    grad = gram @ (alpha + shift)
    support = alpha > 1e-12
    if not support.any():
        return float("inf")
    level = float(np.min(grad[support]))
    return max(
        float(np.max(grad[support]) - level),
        float(max(0.0, level - np.min(grad))),
        float(max(0.0, -np.min(alpha))),
        abs(float(np.sum(alpha)) - 1.0),
    )


def lower_bounded_kkt_violation(gram: np.ndarray, v: np.ndarray, lower: np.ndarray) -> float:
    """How far v is from satisfying the KKT conditions of ``min_{v ≥ u} ½vᵀGv``:
    Gv ≥ 0, v ≥ u, and (Gv)_i = 0 wherever v_i > u_i. Returns the largest violation."""
    return float(_lower_bounded_kkt_violations(gram, v[None, :], lower[None, :])[0])


def _lower_bounded_kkt_violations(gram: np.ndarray, v: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """:func:`lower_bounded_kkt_violation` for each row of the K × T arrays ``v`` and ``lower``."""
    grad = (gram @ v.T).T  # row k: G v_k
    scale = np.maximum(1.0, np.max(np.abs(v), axis=1, keepdims=True))
    free = v - lower > 1e-12 * scale
    free_violation = np.max(np.where(free, np.abs(grad), 0.0), axis=1)
    return np.maximum.reduce(
        [
            free_violation,
            np.maximum(0.0, -np.min(grad, axis=1)),
            np.maximum(0.0, np.max(lower - v, axis=1)),
        ]
    )


# ---------------------------------------------------------------------------- enumeration


def _enumerate_simplex(gram: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Exact fallback: try every support S, solve the KKT system on it, keep the best
    feasible KKT point."""
    t = gram.shape[0]
    best, best_value = np.full(t, 1.0 / t), np.inf
    for size in range(1, t + 1):
        for support in itertools.combinations(range(t), size):
            s = list(support)
            k = np.zeros((size + 1, size + 1))
            k[:size, :size] = gram[np.ix_(s, s)]
            k[:size, size] = 1.0
            k[size, :size] = 1.0
            rhs = np.concatenate([-(gram[s] @ shift), [1.0]])
            sol = np.linalg.lstsq(k, rhs, rcond=None)[0]
            alpha = np.zeros(t)
            alpha[s] = sol[:size]
            if np.min(alpha) < -1e-12:
                continue
            alpha = np.clip(alpha, 0.0, None)
            alpha /= alpha.sum()
            if simplex_kkt_violation(gram, alpha, shift) > KKT_TOL:
                continue
            value = 0.5 * (alpha + shift) @ gram @ (alpha + shift)
            if value < best_value - 1e-15:
                best, best_value = alpha, value
    return best


def _enumerate_lower_bounded(gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Exact fallback: try every set F of free variables (the rest at their bound)."""
    t = gram.shape[0]
    best, best_value = lower.copy(), 0.5 * lower @ gram @ lower
    for size in range(1, t + 1):
        for free in itertools.combinations(range(t), size):
            f = list(free)
            fixed = [i for i in range(t) if i not in free]
            rhs = -(gram[np.ix_(f, fixed)] @ lower[fixed])
            v = lower.copy()
            v[f] = np.linalg.lstsq(gram[np.ix_(f, f)], rhs, rcond=None)[0]
            if np.min(v - lower) < -1e-12:
                continue
            v = np.maximum(v, lower)
            value = 0.5 * v @ gram @ v
            if lower_bounded_kkt_violation(gram, v, lower) <= KKT_TOL and value < best_value:
                best, best_value = v, value
    return best


# ---------------------------------------------------------------------------- the solvers


def simplex_qp(gram: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """``argmin_{α ∈ Δ} ½ (α + s)ᵀ G (α + s)`` over the probability simplex Δ.

    With ``shift`` s = 0 this is the min-norm element of the convex hull of the task gradients
    (MGDA's problem). The minimiser need not be unique when G is singular; the value and Gα
    are. A zero G returns the uniform weights.
    """
    g, scale = _as_gram(gram)
    t = g.shape[0]
    s = np.zeros(t) if shift is None else np.asarray(shift, dtype=np.float64)
    if scale == 0.0:
        return np.full(t, 1.0 / t)
    d = _diagonal_scale(g)
    r = gram_factor(g / np.outer(d, d))  # G = (RD)ᵀ(RD); in β = Dα the simplex is Σ β_i/d_i = 1
    c = r + np.outer(r @ (d * s), 1.0 / d)  # columns R e_i + RDs/d_i
    a = np.vstack([c, 1.0 / d[None, :]])
    b = np.zeros(t + 1)
    b[-1] = 1.0
    y = _nnls(a, b)
    alpha = None
    if y is not None and y.sum() > 0:
        alpha = (y / d) / np.sum(y / d)
    if (alpha is None or simplex_kkt_violation(g, alpha, s) > KKT_TOL) and t <= ENUMERATION_MAX_T:
        alpha = _enumerate_simplex(g, s)
    return alpha if alpha is not None else np.full(t, 1.0 / t)


def lower_bounded_qp(gram: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``argmin_{v ≥ u} ½ vᵀ G v`` for the lower bound ``lower`` = u.

    J ᵀv is then the projection of uᵀJ onto the dual cone {x : Jx ≥ 0} (Quinton & Rey 2024,
    proposition 1): Gv ≥ 0 means every task gradient has a non-negative inner product with it.
    """
    u = np.asarray(lower, dtype=np.float64)
    return lower_bounded_qps(gram, u[None, :])[0]


def lower_bounded_qps(gram: np.ndarray, lowers: np.ndarray) -> np.ndarray:
    """:func:`lower_bounded_qp` for each row u_k of the K × T array ``lowers``, one G for all.

    G is validated, scaled and factorised once; each row is then one Lawson–Hanson NNLS on the
    shared factor, and all K answers are checked against the KKT conditions in one vectorised
    pass (the enumeration fallback runs only for a row that fails). Row k of the result is
    what ``lower_bounded_qp(gram, lowers[k])`` returns, up to rounding.
    """
    g, scale = _as_gram(gram)
    u = np.asarray(lowers, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] != g.shape[0]:
        raise ValueError(f"the lower bounds must have shape (K, {g.shape[0]}), got {u.shape}")
    if scale == 0.0:
        return u.copy()
    d = _diagonal_scale(g)
    r = gram_factor(g / np.outer(d, d))  # ½vᵀGv = ½‖R D v‖², and Dv ≥ Du
    rhs = -(r @ (d[:, None] * u.T))  # column k: −R D u_k
    v = np.empty_like(u)
    solved = np.ones(len(u), dtype=bool)
    for k in range(len(u)):
        lam = _nnls(r, rhs[:, k])
        if lam is None:
            solved[k] = False
            v[k] = u[k]
        else:
            v[k] = u[k] + lam / d
    failed = ~solved | (_lower_bounded_kkt_violations(g, v, u) > KKT_TOL)
    if g.shape[0] <= ENUMERATION_MAX_T:
        for k in np.flatnonzero(failed):
            v[k] = _enumerate_lower_bounded(g, u[k])
    return v


# ---------------------------------------------------------------------------- α-fair weights


def alpha_fair_weights(gram: np.ndarray, alpha: float = 1.0, max_iter: int = 500) -> np.ndarray:
    """The β > 0 with Gβ = β^(−1/a) for the fairness level a = ``alpha`` > 0.

    It is the unique minimiser of the strictly convex F(β) = ½βᵀGβ − Σ_i h(β_i) with
    h'(β) = β^(−1/a) (h = log for a = 1), found by damped Newton with a fraction-to-the-boundary
    rule and Armijo backtracking, then full Newton steps to machine precision (no early stop).

    A solution exists only when some direction d has Jd > 0 (Gordan): tasks with a zero
    gradient (‖g_i‖ ≤ 1e-10 of the largest) cannot take part and get weight 0; and when 0 lies
    in the convex hull of the remaining unit gradients (a Pareto-stationary point, up to 1e-7),
    no task can improve without another worsening, and all weights are 0.
    """
    g, scale = _as_gram(gram)
    t = g.shape[0]
    beta = np.zeros(t)
    active = np.diag(g) > 1e-20
    if scale == 0.0 or not active.any():
        return beta
    ga = g[np.ix_(active, active)]
    norms = np.sqrt(np.diag(ga))
    unit = ga / np.outer(norms, norms)
    hull = simplex_qp(unit)
    if hull @ unit @ hull <= 1e-14:  # distance 1e-7: the rounding level of G = JJᵀ
        return beta
    p = 1.0 / alpha

    def objective(b: np.ndarray) -> float:
        barrier = np.sum(np.log(b)) if p == 1.0 else np.sum(b ** (1.0 - p)) / (1.0 - p)
        return 0.5 * b @ ga @ b - barrier

    b = (np.diag(ga) * len(norms)) ** (-1.0 / (1.0 + p))
    for _ in range(max_iter):
        grad = ga @ b - b ** (-p)
        hess = ga + np.diag(p * b ** (-p - 1.0))
        step = -np.linalg.solve(hess, grad)
        decrement = float(-grad @ step)
        if decrement <= 1e-30:
            break
        size = 1.0
        shrinking = step < 0
        if shrinking.any():
            size = min(1.0, 0.99 * float(np.min(-b[shrinking] / step[shrinking])))
        if decrement > 1e-8:  # damped phase: backtrack until F decreases enough
            f0 = objective(b)
            while size > 1e-12 and objective(b + size * step) > f0 - 0.25 * size * decrement:
                size *= 0.5
        b = b + size * step
        if decrement < 1e-24:
            break
    beta[active] = b
    return beta * scale ** (-1.0 / (1.0 + p))


# ---------------------------------------------------------------------------- torch glue


def gram_to_numpy(gram: Tensor, method: object) -> np.ndarray:
    """The Gram matrix as float64 numpy; a TaskDataError naming ``method`` if not finite."""
    g = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.all(np.isfinite(g)):
        raise TaskDataError(f"{method}: the task gradients contain NaN or inf")
    return g


def weights_to_torch(weights: np.ndarray, like: Tensor) -> Tensor:
    """Task weights as a float64 tensor on ``like``'s device."""
    return torch.as_tensor(weights, dtype=torch.float64, device=like.device)
