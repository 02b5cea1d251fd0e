"""FairGrad: α-fair allocation of the update between the tasks.

Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", ICML.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting._fair import alpha_fair_weights
from mtlkit.weighting._gram import gram_to_numpy, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("fairgrad")
class FairGrad(GramianWeighting):
    """FairGrad (Ban & Ji 2024, ICML).

    Each task's utility is its improvement g_iᵀd; the update maximises the α-fair welfare
    Σ_i (g_iᵀd)^(1−α)/(1−α) (Σ log for α = 1) in a ball. Its KKT conditions give d = Σ_i w_i g_i
    with w > 0 solving Gw = w^(−1/α). α = 1 is proportional fairness (Nash-MTL); α → ∞
    approaches max-min fairness. ``alpha`` defaults to 1.0 (proportional fairness); the paper
    tunes it per benchmark.

    Deviations: the equation is solved to machine precision as the minimiser of a strictly
    convex function by damped Newton (see :mod:`mtlkit.weighting._qp`) rather than by the
    authors' ``scipy.optimize.least_squares`` call. A task with a zero gradient gets weight 0,
    and at a Pareto-stationary point (no d with Jd > 0, so no solution) all weights are 0.

    Scale: like Nash-MTL the solution has its own scale and is *not* rescaled to the project's
    T·g convention: T identical gradients g give T·w·g with w = (T‖g‖²)^(−α/(1+α)). The
    authors' reference code gives T times this update and then clips its norm to 1
    (``max_norm=1.0``); to match it, multiply the learning rate by T and set the Trainer's
    ``train.grad_clip: 1.0``.
    """

    name = "fairgrad"

    def __init__(self, alpha: float = 1.0, jacobian: str = "shared", update_every: int = 1) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        if not (math.isfinite(float(alpha)) and float(alpha) > 0):
            raise ConfigError(f"FairGrad: option 'alpha' must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        return weights_to_torch(alpha_fair_weights(gram_to_numpy(gram, self), self.alpha), gram)

    def hyperparameters(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().hyperparameters()}
