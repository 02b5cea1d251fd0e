"""IMTL-G: the update whose projections on the unit task gradients are all equal.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, "Towards Impartial Multi-task Learning",
ICLR.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from mtlkit.weighting._gram import cosine_pinv_ones, gram_to_numpy, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("imtl_g")
class IMTLG(GramianWeighting):
    """Impartial MTL, gradient balance (Liu et al. 2021, ICLR).

        The update g = Σ_i α_i g_i with Σ_i α_i = 1 has equal projections on the unit task
        gradients u_i = g_i/‖g_i‖: gᵀ(u_1 − u_j) = 0 for j = 2..T (the paper's closed form,
        α_{2:T} = g_1 Uᵀ(DUᵀ)⁻¹ with D = [g_1 − g_j]ⱼ, U = [u_1 − u_j]ⱼ, solves these equations).
        On G alone: with d_i = ‖g_i‖, β = diag(d)α and C the cosine matrix, gᵀu_i = (Cβ)_i, so the
        conditions read Cβ = λ·1 for some λ, and Σ_i β_i/d_i = 1. For an invertible C this is
        β = C⁻¹1 / (wᵀC⁻¹1) with w = 1/d, the paper's solution.

        Deviations, for singular or nearly singular C (identical, parallel or nearly collinear
        gradients, T > P), where the paper's inverse does not exist: the β with Cβ ∈ span(1) form
        the space S = span(C⁺1) ⊕ null(C) when 1 is in the range of C, else S = null(C) (see
        :func:`~mtlkit.weighting._gram.cosine_pinv_ones` for which directions count as null).
        Every β in S with wᵀβ = 1 gives an update with equal projections, and the least-norm one,
        β = P_S w / ‖P_S w‖², is used: it is the same whatever the task order, equals the paper's
        for invertible C, and T exactly collinear gradients get weights ∝ 1/‖g_i‖² (T identical
        gradients g give T·g). If w ⊥ S no β exists and all weights are 0. Tasks with a zero
        gradient have no direction and get weight 0. The weights are
    multiplied by T (they sum to T). Weights may be negative, as in the paper. The update scales
        linearly with the gradients, and its direction does not change when one task's gradient is
        rescaled (for linearly independent task gradients).
    """

    name = "imtl_g"

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        p = gram_to_numpy(gram, self)
        alpha = np.zeros(p.size)
        ones, null = cosine_pinv_ones(p)
        n, norm = len(p.live), float(np.linalg.norm(ones))
        # Cβ = λ1 with λ ≠ 0 needs 1 in the range of C (to G's precision); else only λ = 0
        consistent = float(np.linalg.norm(null.T @ np.ones(n))) <= math.sqrt(n * p.eps * n)
        basis = np.hstack([ones[:, None] / norm, null]) if consistent and norm > 0 else null
        if basis.size:
            projected = basis @ (basis.T @ (1.0 / p.d))  # P_S w
            size = float(projected @ (1.0 / p.d))  # ‖P_S w‖² = wᵀ P_S w
            if size > 1e-12 * float(np.sum(1.0 / p.d**2)):
                alpha[p.live] = projected / size / p.d
        return weights_to_torch(p.size * alpha, gram)
