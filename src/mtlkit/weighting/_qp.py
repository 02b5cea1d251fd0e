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

How singular inputs are handled, by construction (:class:`~mtlkit.weighting._gram.Gram`):

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
max_j |min(x_j, ∇_j)|, relative to the problem's scale). scipy's ``nnls`` is tried first
(for many problems on one factor, UPGrad's T dual-cone problems, a batched primal-dual
active-set method, :func:`~mtlkit.weighting._nnls.batched_nnls`, before it, one batched KKT
check for all, scipy only for a problem that fails it); an
answer that fails the check is solved again by mtlkit's own Lawson–Hanson implementation
(:func:`~mtlkit.weighting._nnls.active_set_nnls`), which is correct for every T; if that fails
too (never seen), the better of the two is returned with a
:class:`~mtlkit.weighting._nnls.SolverWarning` that names the violation. No point is returned
unverified and silently.

The parts: :mod:`~mtlkit.weighting._gram` prepares G (steps 1-3), :mod:`~mtlkit.weighting._nnls`
solves and verifies the NNLS problems, this module states the two QPs, and
:mod:`~mtlkit.weighting._fair` solves the α-fair equation.
"""

from __future__ import annotations

import numpy as np

from mtlkit.weighting._gram import Gram
from mtlkit.weighting._nnls import verified_nnls, verified_nnls_many


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

    G is prepared and factorised once; each row is then one NNLS on the shared factor, and the
    K answers are verified together (one batched KKT check; a row that fails it is solved again
    by the fallback, :func:`~mtlkit.weighting._nnls.verified_nnls_many`).
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
    mu = verified_nnls_many(r, rhs, "dual-cone QP")  # n × K, each column verified
    v[:, p.live] += (mu / d[:, None]).T
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
