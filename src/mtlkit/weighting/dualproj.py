"""DualProj: the combined gradient projected onto the dual cone of the Jacobian.

Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
"""

from __future__ import annotations

from torch import Tensor

from mtlkit.weighting._gram import gram_to_numpy, weights_to_torch
from mtlkit.weighting._preference import PreferenceWeighting
from mtlkit.weighting._qp import lower_bounded_qp
from mtlkit.weighting.base import WEIGHTINGS


@WEIGHTINGS.register("dualproj")
class DualProj(PreferenceWeighting):
    """Dual projection (Quinton & Rey 2024, arXiv:2406.16232).

    Algorithm (the paper's 𝒜_DualProj, computed through its proposition 1):

    1. α = argmin_{v ≥ w} ½ vᵀGv, so that Jᵀα is the projection of wᵀJ onto the dual cone
       {x : Jx ≥ 0};
    2. the update is Jᵀα.

    Every task gradient has a non-negative inner product with the update. The preference
    vector w (``pref_vector``, in task order) defaults to ones, so the update of T identical
    gradients g is T·g (the paper uses the mean; the project sums). Deviation: the QP is solved
    exactly (Lawson–Hanson NNLS, see :mod:`mtlkit.weighting._qp`), without regularising G.
    """

    name = "dualproj"

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram_to_numpy(gram, self)
        w = self.preference(g.size)
        return weights_to_torch(lower_bounded_qp(g, w), gram)
