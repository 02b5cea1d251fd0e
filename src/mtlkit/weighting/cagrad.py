"""CAGrad: the best worst-case improvement within a ball around the average gradient.

Liu, Liu, Jin, Stone & Liu 2021, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS.
"""

from __future__ import annotations

import math
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
    at the r* where r = ‖g_w(r)‖, a monotone scalar equation solved by Brent's method to machine
    precision (each evaluation an exact QP, see :mod:`mtlkit.weighting._qp`). When the optimal
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
        # norms computed from G, a norm is indistinguishable from 0
        floor = math.sqrt(RANK_RTOL * t * p.eps) * top
        w_min = simplex_qp(p)
        low = max(math.sqrt(max(float(w_min @ g @ w_min), 0.0)), floor)
        if slope(low) >= 0:
            w = inner(low)
        elif slope(top) <= 0:  # ‖g_w‖ ≤ max_i ‖g_i‖ = top: only rounding makes it negative
            w = inner(top)
        else:
            from scipy.optimize import brentq  # here: scipy.optimize is slow to import

            root = brentq(slope, low, top, xtol=1e-15 * top, rtol=4 * np.finfo(float).eps)
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
