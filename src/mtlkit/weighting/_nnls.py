"""Non-negative least squares, verified: scipy's Lawson–Hanson first, this module's own
active-set implementation when its answer fails the KKT check, a warning if both fail. Many
problems on one matrix (:func:`verified_nnls_many`) are first solved together by a batched
primal-dual active-set method (:func:`batched_nnls`), each answer verified the same way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from mtlkit.weighting._gram import EPS64

#: KKT (natural residual) tolerance of an NNLS answer, in units of (m + n) · ε64 · its scale
KKT_RTOL = 1e3
_TINY = float(np.finfo(np.float64).tiny)


class SolverWarning(RuntimeWarning):
    """A solver could not verify its answer (the KKT check failed for every algorithm)."""


def nnls_violation(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """How far x is from the optimum of ``min_{x ≥ 0} ‖Ax − b‖``, relative to the problem's
    scale: the natural residual max_j |min(x_j, ∇_j)| with ∇ = Aᵀ(Ax − b), over (m + n)·ε64
    times ‖A‖_F(‖A‖_F‖x‖_∞ + ‖b‖_∞). An exact optimum gives about 1; :data:`KKT_RTOL` passes."""
    if x.size == 0:
        return 0.0
    return float(nnls_violations(a, b[:, None], x[:, None])[0])


def nnls_violations(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`nnls_violation` of every column: ``b`` is m × K, ``x`` n × K (K problems on one
    A, checked with two matrix products)."""
    grad = a.T @ (a @ x - b)
    residual = np.abs(np.minimum(x, grad)).max(axis=0, initial=0.0)
    flat = a.ravel()
    norm_a = math.sqrt(float(flat @ flat))  # ‖A‖_F, as np.linalg.norm computes it
    size = norm_a * (
        norm_a * np.abs(x).max(axis=0, initial=0.0) + np.abs(b).max(axis=0, initial=0.0)
    )
    unit = (sum(a.shape) + 1) * EPS64 * np.maximum(size, _TINY)
    out: np.ndarray = residual / unit
    return out


_NNLS: list[Callable[..., Any]] = []  # scipy's nnls, imported on first use


def _scipy_nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """scipy's Lawson–Hanson NNLS with a generous iteration cap; None if it gives up."""
    if not _NNLS:
        from scipy.optimize import nnls  # imported here: scipy.optimize is slow to import

        _NNLS.append(nnls)
    try:
        x: np.ndarray = _NNLS[0](a, b, maxiter=50 * a.shape[1] + 100)[0]
    except RuntimeError:
        return None
    return x


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


def batched_nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin_{x ≥ 0} ‖Ax − b_k‖`` for every column b_k of ``b`` (m × K) at once, by the
    primal-dual active-set method (Hintermüller, Ito & Kunisch 2002, "The primal-dual active
    set strategy as a semismooth Newton method", SIAM J. Optim.) on the normal equations
    C x = q_k, C = AᵀA, q_k = Aᵀb_k, all K problems advancing together.

    Each iteration solves, for every problem k still moving, the equations of its free set F_k
    (C_FF x_F = q_F, x = 0 elsewhere) as one batched solve (the free sets gathered, padded to
    the largest with identity rows), then takes F_k = {x_i > 0 in F_k} ∪ {λ_i < 0 off F_k}
    with λ = Cx − q; a problem whose free set repeats satisfies the KKT conditions and stops.
    One step of iterative refinement on the final free sets recovers the digits of the normal
    equations. Starts from LH's first free set (λ at x = 0). Returns n × K; a column that did
    not settle within ``max_iter`` (min(2n + 10, 40) by default) holds NaN. Needs C_FF
    non-singular (A of full column rank): a singular batch raises
    ``numpy.linalg.LinAlgError``. Nothing here is
    verified: :func:`verified_nnls_many` checks every column's KKT conditions.
    """
    n, k = a.shape[1], b.shape[1]
    c = a.T @ a
    q = a.T @ b  # n × K
    free = q > 0  # λ = −q at x = 0
    x = np.zeros((n, k))
    settled = np.zeros(k, dtype=bool)

    def solve(free: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """x_F = C_FF⁻¹ rhs_F per column, 0 off F: K systems of the largest free-set size s,
        each free set gathered first and padded with identity rows."""
        counts = free.sum(axis=0)
        size = int(counts.max(initial=0))
        out = np.zeros(free.shape)
        if size == 0:
            return out
        order = np.argsort(~free, axis=0, kind="stable")[:size]  # s × K: F_k first
        columns = np.arange(free.shape[1])[None, :]  # 1 × K
        valid = (np.arange(size)[:, None] < counts[None, :]).T.astype(np.float64)  # K × s
        index = order.T  # K × s
        systems = c[index[:, :, None], index[:, None, :]] * valid[:, :, None] * valid[:, None, :]
        systems += np.eye(size)[None, :, :] * (1.0 - valid)[:, :, None]
        gathered = rhs[order, columns].T * valid  # K × s
        z = np.linalg.solve(systems, gathered[:, :, None])[:, :, 0] * valid
        out[order, columns] = z.T
        return out

    todo = np.arange(k)  # the columns still moving: only they are solved again
    for _ in range(max_iter or min(2 * n + 10, 40)):
        x_todo = solve(free[:, todo], q[:, todo])
        lam = c @ x_todo - q[:, todo]
        was = free[:, todo]
        now = (was & (x_todo > 0)) | (~was & (lam < 0))
        done = (now == was).all(axis=0)
        x[:, todo] = x_todo
        settled[todo[done]] = True
        free[:, todo] = now
        todo = todo[~done]
        if not len(todo):
            break
    x = x + solve(free, q - c @ x)  # one step of iterative refinement on the free sets
    x[:, ~settled] = np.nan
    return x


#: K at and above which :func:`verified_nnls_many` tries :func:`batched_nnls` first (below,
#: scipy's per-call overhead is small)
BATCHED_FROM = 8


def verified_nnls_many(a: np.ndarray, b: np.ndarray, what: str = "NNLS") -> np.ndarray:
    """:func:`verified_nnls` for each column of ``b`` (m × K), one A for all: the K problems
    are solved together by :func:`batched_nnls` (when K ≥ BATCHED_FROM and A has at least as
    many rows as columns), one batched KKT check verifies them all, a column that fails it is
    solved by scipy, checked again, and only a column that fails both goes through
    :func:`verified_nnls`' fallback. Returns n × K."""
    k = b.shape[1]
    x = np.zeros((a.shape[1], k))
    solved = np.zeros(k, dtype=bool)
    if k >= BATCHED_FROM and a.shape[0] >= a.shape[1] > 0:
        try:
            batch = batched_nnls(a, b)
        except np.linalg.LinAlgError:  # a singular free set: A is rank-deficient
            batch = np.full_like(x, np.nan)
        finite = np.isfinite(batch).all(axis=0)
        x[:, finite] = np.maximum(batch[:, finite], 0.0)
        solved = finite & (nnls_violations(a, b, x) <= KKT_RTOL)
    for j in np.flatnonzero(~solved).tolist():
        column = _scipy_nnls(a, b[:, j])
        if column is not None and np.all(np.isfinite(column)):
            x[:, j] = np.clip(column, 0.0, None)
        else:
            x[:, j] = np.nan  # no answer yet: the fallback below
    if k:
        todo = ~solved
        passed = np.zeros(k, dtype=bool)
        if todo.any():
            finite = np.all(np.isfinite(x), axis=0)
            checked = np.where(finite, x, 0.0)
            passed = finite & (nnls_violations(a, b, checked) <= KKT_RTOL)
        for failed in np.flatnonzero(todo & ~passed).tolist():
            x[:, failed] = verified_nnls(a, b[:, failed], what)
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
