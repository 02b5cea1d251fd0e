"""ConFIG: conflict-free inverse gradients.

Liu, Chu, Thuerey (2024). "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks". ICLR 2025.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.weighting._gram import cosine_pinv_ones, gram_to_numpy, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("config")
class ConFIG(GramianWeighting):
    """An update with the same positive cosine to every task gradient.

    The paper's update (equal task weights)::

        U = [g_1/‖g_1‖, …, g_T/‖g_T‖]ᵀ                      (unit task gradients, T × P)
        v = U⁺ 1                                            (so that u_i · v = 1 for all i)
        ĝ_v = v / ‖v‖
        update = (Σ_i g_iᵀ ĝ_v) ĝ_v                         (length from the projections)

    Each unit gradient then has the same cosine u_i · ĝ_v = 1/‖v‖ > 0 with the update, so no
    task's loss increases to first order. Computed on G = J Jᵀ, an exact rewrite: with
    D = diag(‖g_i‖) and C = D⁻¹ G D⁻¹ (the cosine matrix), U⁺ = Uᵀ C⁺, so
    v = Jᵀ D⁻¹ C⁺ 1, ‖v‖² = cᵀ C c with c = C⁺ 1, and the task weights are
    α = (1ᵀ G D⁻¹ c / ‖v‖²) · D⁻¹ c. The pseudo-inverse treats eigen-directions of C that G's
    precision cannot resolve as null (:func:`~mtlkit.weighting._gram.cosine_pinv_ones`), so
    nearly collinear gradients give the same answer in any task order.

    A zero task gradient (norm ≤ 1e-10 of the largest) has no direction: it is left out of U
    (weight 0), and the others are combined as usual. When the u_i are linearly dependent in a
    way that admits no equal-cosine direction (e.g. gradients summing to zero) the
    pseudo-inverse gives the least-squares compromise, as in the paper.

    Scale: T identical gradients g give v = g/‖g‖ and the update T·g, a sum like EW.
    """

    name = "config"

    def __init__(self, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        p = gram_to_numpy(gram, self)
        alpha = np.zeros(p.size)
        c, _ = cosine_pinv_ones(p)  # v = Jᵀ D⁻¹ c
        sq_norm = float(c @ p.cosine @ c)  # ‖v‖²
        if sq_norm > 0:
            direction = c / p.d
            live = p.matrix[np.ix_(p.live, p.live)]
            alpha[p.live] = float(np.sum(live @ direction)) / sq_norm * direction
        return weights_to_torch(alpha, gram)
