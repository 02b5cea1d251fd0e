"""CAGrad: the best worst-case improvement within a ball around the average gradient.

Liu, Liu, Jin, Stone & Liu 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting._gram import RANK_RTOL, Gram, gram_to_numpy, weights_to_torch
from mtlkit.weighting._qp import lower_bounded_qp, simplex_qp
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting

RESCALES = (0, 1, 2)


@WEIGHTINGS.register("cagrad")
class CAGrad(GramianWeighting):
    """Conflict-averse gradient descent (Liu et al. 2021, NeurIPS).

    Primal problem: max_d min_i g_iᵀd  s.t.  ‖d − g₀‖ ≤ c‖g₀‖, with g₀ the mean gradient.
    Algorithm 1 solves its dual over the simplex,

        w* = argmin_{w ∈ Δ} g_wᵀg₀ + √φ ‖g_w‖,   g_w = Σ_i w_i g_i,  φ = c²‖g₀‖²,

    and updates along d = g₀ + (√φ / ‖g_w*‖) g_w*, divided by 1 + c (``rescale=2``, the default
    here), 1 + c² (``rescale=1``, the authors' code default) or 1 (``rescale=0``, Algorithm 1 as
    printed). Dividing by 1 + c makes T identical gradients g give exactly T·g, the project's
    scale convention; the other choices give (1 + c)/(1 + c²)·T·g and (1 + c)·T·g.

    The dual is solved exactly rather than by the paper's few SLSQP steps: with
    √s = min_{r>0} (s/(2r) + r/2), w* is the simplex QP min ½(w + (r/√φ)·1/T)ᵀG(w + (r/√φ)·1/T)
    at the r* where r = ‖g_w(r)‖, a monotone scalar equation solved to machine precision (each
    evaluation an exact QP, see :mod:`mtlkit.weighting._qp`): on each piece where the QP's
    support is fixed, w is affine in r and the equation a quadratic, so an active-set iteration
    (:func:`_active_set_root`) usually lands on r* with two or three QPs; Brent's method is the
    fallback (zero-gradient tasks, a support that does not settle). When the optimal
    g_w* is 0 (up to √(10·T·eps) of the largest gradient norm, the rounding level of norms
    computed from G, about 1e-7 in float64; possible only when 0 is in the convex hull),
    Algorithm 1's step is undefined; every primal optimum then has Jd ≥ 0, and the one closest
    to g₀ (the projection of g₀ onto the dual cone {x : Jx ≥ 0}) is used. A zero task gradient
    (see :mod:`mtlkit.weighting._qp`) takes part in g₀ and in the simplex as the zero vector it
    is; its weight is its share of the mean, plus an equal share of any mass the dual puts on
    zero gradients, whatever its position in the task list.

    Scale: the weights are T times the paper's, so the update is T·d; with c = 0 it is T × the
    mean gradient, i.e. the sum (weights 1).
    """

    name = "cagrad"

    def __init__(
        self, c: float = 0.4, rescale: int = 2, jacobian: str = "shared", update_every: int = 1
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        if not (math.isfinite(float(c)) and float(c) >= 0):
            raise ConfigError(f"CAGrad: option 'c' must be ≥ 0, got {c}")
        if rescale not in RESCALES:
            raise ConfigError(f"CAGrad: option 'rescale' must be one of 0, 1, 2, got {rescale}")
        self.c = float(c)
        self.rescale = int(rescale)

    def dual_weights(self, p: Gram) -> np.ndarray:
        """The paper's combination weights of d (summing to 1 + c‖g₀‖/‖g_w*‖ before scaling)."""
        g, t = p.matrix, p.size
        mean = np.full(t, 1.0 / t)
        radius = self.c * math.sqrt(max(float(mean @ g @ mean), 0.0))  # √φ = c‖g₀‖
        top = math.sqrt(max(float(np.max(np.diag(g))), 0.0))
        if radius <= 1e-15 * top:
            return mean

        def inner(r: float) -> np.ndarray:
            return simplex_qp(p, shift=(r / radius) * mean)

        def slope(r: float) -> float:  # sign of d/dr of the partial minimum over w
            w = inner(r)
            return 1.0 - float(w @ g @ w) / r**2

        # ‖g_w‖ ≥ the min-norm of the hull; below √(RANK_RTOL·T·eps)‖g‖, the rounding level of
        # norms computed from G, a norm is indistinguishable from 0; the root of the slope in
        # (low, top) by the active-set iteration (_active_set_root), else by Brent's method
        floor = math.sqrt(RANK_RTOL * t * p.eps) * top
        w_min = simplex_qp(p)
        low = max(math.sqrt(max(float(w_min @ g @ w_min), 0.0)), floor)
        w_low = inner(low)
        if 1.0 - float(w_low @ g @ w_low) / low**2 >= 0:  # slope(low) ≥ 0
            w = w_low
        else:
            found = _active_set_root(p, radius, low, top, w_low, inner)
            if found is not None:
                w = found
            elif slope(top) <= 0:  # ‖g_w‖ ≤ max_i ‖g_i‖ = top: only rounding makes it negative
                w = inner(top)
            else:
                from scipy.optimize import brentq  # here: scipy.optimize is slow to import

                # the slope is evaluated through QP solutions, so near the root its sign is
                # rounding noise and Brent may not settle within its tolerance: the last
                # bracket then holds the root to that noise, and its estimate is kept
                root = brentq(
                    slope,
                    low,
                    top,
                    xtol=1e-15 * top,
                    rtol=4 * np.finfo(float).eps,
                    maxiter=200,
                    disp=False,
                )
                w = inner(root)
        norm = math.sqrt(max(float(w @ g @ w), 0.0))
        if norm <= 1.01 * floor:
            return lower_bounded_qp(p, mean)  # g_w* = 0: the projection of g₀ on the dual cone
        return mean + (radius / norm) * w

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        p = gram_to_numpy(gram, self)
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return weights_to_torch(p.size * self.dual_weights(p) / divisor, gram)

    def hyperparameters(self) -> dict[str, Any]:
        return {"c": self.c, "rescale": self.rescale, **super().hyperparameters()}


#: the largest relative slope 1 − ‖g_w(r)‖²/r² at which the active-set iteration's r is the root
ROOT_RTOL = 1e-10
#: active-set iterations before Brent's method takes over
ROOT_ITERATIONS = 6


def _active_set_root(
    p: Gram,
    radius: float,
    low: float,
    top: float,
    w_start: np.ndarray,
    inner: Callable[[float], np.ndarray],
) -> np.ndarray | None:
    """CAGrad's inner solution w(r*) at the root r* of r = ‖g_w(r)‖ in (low, top], by an
    active-set iteration on the parametric simplex QP; None where it does not settle (then
    Brent's method finds r*).

    For a fixed support S of w (the tasks with w_i > 0), the KKT conditions of
    min_{w ∈ Δ} ½(w + τm)ᵀG(w + τm) (m = 1/T, τ = r/√φ) are linear in (w_S, λ):
    G_SS w_S + τ(Gm)_S = λ1, 1ᵀw_S = 1, so w(τ) = a + τb is affine in τ, and r = ‖g_w(r)‖
    becomes the quadratic r² = aᵀGa + 2(r/√φ)aᵀGb + (r/√φ)²bᵀGb. Its root r₁ in (low, top]
    gives w(r₁) by one exact QP (``inner``); if that support is S again, the affine piece holds
    at r₁ and r₁ is the root (checked: |1 − ‖g_w‖²/r₁²| ≤ ROOT_RTOL); else the new support
    gives the next quadratic. Usually one or two QPs instead of Brent's ten or so; the answer
    is the same exact QP at the same root.
    """
    g = p.matrix
    t = p.size
    if len(p.zero) or len(p.live) != t:
        return None  # the mass on zero gradients is a variable of its own: Brent's method
    gr = p.d[:, None] * p.cosine * p.d[None, :]  # G as the QP sees it (rank-truncated)
    shift = gr @ np.full(t, 1.0 / t)  # G m
    w, r = w_start, low
    for _ in range(ROOT_ITERATIONS):
        support = np.flatnonzero(w > 0)
        s = len(support)
        kkt = np.zeros((s + 1, s + 1))
        kkt[:s, :s] = gr[np.ix_(support, support)]
        kkt[:s, s] = -1.0
        kkt[s, :s] = 1.0
        rhs = np.zeros((s + 1, 2))
        rhs[s, 0] = 1.0
        rhs[:s, 1] = -shift[support]
        z = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
        if not np.allclose(kkt @ z, rhs, rtol=0.0, atol=1e-9):
            return None
        a, b = np.zeros(t), np.zeros(t)
        a[support], b[support] = z[:s, 0], z[:s, 1]
        ga, gb = g @ a, g @ b
        q2, q1, q0 = 1.0 - float(b @ gb) / radius**2, -2.0 * float(a @ gb) / radius, -float(a @ ga)
        roots = _quadratic_roots(q2, q1, q0)
        inside = [x for x in roots if low < x <= top * (1 + 1e-12)]
        if not inside:
            return None
        r_next = min(inside, key=lambda x: abs(x - r))
        w_next = inner(r_next)
        same = np.array_equal(np.flatnonzero(w_next > 0), support)
        w, r = w_next, r_next
        if same:
            if abs(1.0 - float(w @ g @ w) / r**2) <= ROOT_RTOL:
                return w
            return None
    return None


def _quadratic_roots(a: float, b: float, c: float) -> list[float]:
    """The real roots of ax² + bx + c (numerically stable; a linear equation when a = 0)."""
    if a == 0.0:
        return [] if b == 0.0 else [-c / b]
    disc = b * b - 4 * a * c
    if disc < 0:
        return []
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    if q == 0.0:
        return [0.0]
    return [q / a, c / q]
