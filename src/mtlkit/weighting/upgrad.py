"""UPGrad: the mean of the task gradients each projected onto the dual cone of the Jacobian.

Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from mtlkit.weighting._gram import gram_to_numpy, weights_to_torch
from mtlkit.weighting._preference import PreferenceWeighting
from mtlkit.weighting._qp import lower_bounded_qps
from mtlkit.weighting.base import WEIGHTINGS


@WEIGHTINGS.register("upgrad")
class UPGrad(PreferenceWeighting):
    """Unconflicting projection of gradients (Quinton & Rey 2024, arXiv:2406.16232).

    Algorithm (the paper's definition of 𝒜_UPGrad, computed through its proposition 1):

    1. for each task i: v⁽ⁱ⁾ = argmin_{v ≥ w_i e_i} ½ vᵀGv, so Jᵀv⁽ⁱ⁾ is the projection of
       w_i g_i onto the dual cone {x : Jx ≥ 0};
    2. α = Σ_i v⁽ⁱ⁾ and the update is Jᵀα = Σ_i w_i π(g_i).

    Every task gradient has a non-negative inner product with the update. The preference
    vector w (``pref_vector``, in task order) defaults to ones, so the weights sum to at least
    T and T identical gradients g give T·g (the paper's default is the mean, 1/T; the project
    sums). Deviation: the QPs are solved exactly (Lawson–Hanson NNLS on G, see
    :mod:`mtlkit.weighting._qp`), without the small regularisation of G the reference
    implementation adds; the T problems share one factorisation of G
    (:func:`~mtlkit.weighting._qp.lower_bounded_qps`).

    g₁ = (1, 0) and g₂ = (−1, 1) conflict; π(g₁) = (½, ½), π(g₂) = (0, 1):

    >>> import torch
    >>> jac = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    >>> update = UPGrad().aggregate(jac)
    >>> update
    tensor([0.5000, 1.5000], dtype=torch.float64)
    >>> jac @ update  # no task's loss increases, to first order
    tensor([0.5000, 1.0000], dtype=torch.float64)
    """

    name = "upgrad"

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram_to_numpy(gram, self)
        t = g.size
        w = self.preference(t)
        lowers = np.diag(w)[w > 0]  # row k: w_i e_i for each task i with w_i > 0
        alpha = lower_bounded_qps(g, lowers).sum(axis=0) if len(lowers) else np.zeros(t)
        return weights_to_torch(alpha, gram)
