"""ConFIG: conflict-free inverse gradients.

Liu, Chu, Thuerey (2024). "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks". ICLR 2025.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
    α = (1ᵀ G D⁻¹ c / ‖v‖²) · D⁻¹ c. The pseudo-inverse drops eigenvalues of C below
    T · eps (eps of ``gram``'s dtype) times the largest.

    A zero task gradient has no direction: it is left out of U (weight 0), and the others are
    combined as usual. When the u_i are linearly dependent in a way that admits no equal-cosine
    direction (e.g. gradients summing to zero) the pseudo-inverse gives the least-squares
    compromise, as in the paper.

    Scale: T identical gradients g give v = g/‖g‖ and the update T·g, a sum like EW.
    """

    name = "config"

    def __init__(self, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        t = gram.shape[0]
        g = gram.detach().double()
        norms = g.diagonal().clamp_min(0.0).sqrt()
        nonzero = norms > 0
        inv = torch.where(nonzero, 1.0 / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        cosines = g * inv.unsqueeze(1) * inv.unsqueeze(0)
        rtol = t * torch.finfo(gram.dtype).eps
        c = torch.linalg.pinv(cosines, hermitian=True, rtol=rtol) @ nonzero.double()
        direction = inv * c  # v = Jᵀ direction
        sq_norm = direction @ g @ direction
        if not bool(sq_norm > 0):
            return torch.zeros(t, dtype=torch.float64, device=gram.device)
        unit = direction / sq_norm.sqrt()  # ĝ_v = Jᵀ unit
        length = (g @ unit).sum()  # Σ_i g_i · ĝ_v
        return length * unit
