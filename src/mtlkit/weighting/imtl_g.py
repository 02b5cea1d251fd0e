"""IMTL-G: the update whose projections on the unit task gradients are all equal.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, "Towards Impartial Multi-task Learning",
ICLR.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.weighting._qp import gram_to_numpy, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("imtl_g")
class IMTLG(GramianWeighting):
    """Impartial MTL, gradient balance (Liu et al. 2021, ICLR).

    The update g = Σ_i α_i g_i with Σ_i α_i = 1 has equal projections on the unit task
    gradients u_i = g_i/‖g_i‖: gᵀ(u_1 − u_j) = 0 for j = 2..T. The paper's closed form,
    α_{2:T} = g_1 Uᵀ(DUᵀ)⁻¹ with D = [g_1 − g_j]ⱼ, U = [u_1 − u_j]ⱼ and α_1 = 1 − Σ α_{2:T},
    solves exactly these T linear equations, which are written here on G alone:
    M = G diag(‖g‖)⁻¹ holds g_aᵀu_b, and α solves αᵀM(e_1 − e_j) = 0, 1ᵀα = 1.

    Deviations: the system is solved by least squares, giving the minimum-norm α when it is
    singular (identical or collinear gradients, where every such α gives the same update);
    tasks with a zero gradient have no direction and get weight 0. The weights are multiplied
    by T (they sum to T; T identical gradients g give T·g). Weights may be negative, as in
    the paper. The update scales linearly with the gradients, and its direction does not change
    when one task's gradient is rescaled (for linearly independent task gradients).
    """

    name = "imtl_g"

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram_to_numpy(gram, self)
        t = g.shape[0]
        norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
        active = norms > 1e-10 * max(float(norms.max()), 1e-300)
        alpha = np.zeros(t)
        if active.any():
            ga = g[np.ix_(active, active)]
            m = ga / norms[active][None, :]  # m[a, b] = g_aᵀ u_b
            k = int(active.sum())
            system = np.vstack([(m[:, :1] - m[:, 1:]).T, np.ones((1, k))])
            rhs = np.zeros(k)
            rhs[-1] = 1.0
            alpha[active] = np.linalg.lstsq(system, rhs, rcond=None)[0]
        return weights_to_torch(t * alpha, gram)
