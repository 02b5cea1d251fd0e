"""Nash-MTL: the Nash bargaining solution between the tasks.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya 2022, "Multi-Task Learning as a
Bargaining Game", ICML.
"""

from __future__ import annotations

from torch import Tensor

from mtlkit.weighting._fair import alpha_fair_weights
from mtlkit.weighting._gram import gram_to_numpy, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("nash_mtl")
class NashMTL(GramianWeighting):
    """Nash-MTL (Navon et al. 2022, ICML).

    The tasks bargain over the update d in a ball: maximise Σ_i log(g_iᵀd). The solution is
    d = Σ_i α_i g_i with α > 0 solving (Gα) ⊙ α = 1 (the paper's Theorem 5.1), i.e.
    Gα = 1/α.

    Deviations: the equation is solved to machine precision as the minimiser of the strictly
    convex ½αᵀGα − Σ_i log α_i by damped Newton (see :mod:`mtlkit.weighting._qp`), instead of
    the paper's sequence of convex-concave (CCP) steps stopped after a few iterations, so
    listing the tasks in another order gives the same update (to rounding, down to distances of
    about 1e-3 from a Pareto-stationary point; closer, float64 itself determines the update
    only to about ε/δ²). The authors' code clips the norm of the update to 1
    (``max_norm=1.0``); Nash-MTL here does not clip (set the Trainer's ``train.grad_clip: 1.0``
    to match them). A task
    with a zero gradient cannot bargain and gets weight 0; at a Pareto-stationary point (0 in
    the convex hull of the task gradients) no solution exists and all weights are 0. The
    authors' code recomputes α every 25 steps for speed (``update_every=25``); the default
    here is every step.

    Scale: the bargaining solution has its own scale and is *not* rescaled to the project's
    T·g convention: rescaling the gradient of task i by s_i > 0 divides α_i by s_i and leaves
    the update unchanged (the invariance to utility scales the paper proves), so T identical
    gradients g give √T·g/‖g‖.
    """

    name = "nash_mtl"

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        return weights_to_torch(alpha_fair_weights(gram_to_numpy(gram, self), 1.0), gram)
