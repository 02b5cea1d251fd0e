"""MGDA: the min-norm element of the convex hull of the task gradients.

Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from mtlkit.errors import ConfigError, TaskDataError
from mtlkit.weighting._gram import gram_to_numpy, weights_to_torch
from mtlkit.weighting._qp import simplex_qp
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@WEIGHTINGS.register("mgda")
class MGDA(GramianWeighting):
    """Multiple-gradient descent (Sener & Koltun 2018, NeurIPS, after Désidéri 2012).

    Algorithm (the paper's eq. 3, MGDA-UB with ``jacobian="representation"``):

    1. normalise each task gradient, ĝ_i = g_i / n_i (``normalization``, as in the authors'
       code: "none" n_i = 1, "l2" n_i = ‖g_i‖, "loss" n_i = L_i, "loss+" n_i = L_i ‖g_i‖);
    2. α* = argmin_{α ∈ Δ} ‖Σ_i α_i ĝ_i‖², the min-norm point of the convex hull;
    3. update Σ_i α*_i g_i with the raw gradients (the authors' code scales the raw losses by α*).

    Deviations: the min-norm problem is solved exactly (Lawson–Hanson NNLS, see
    :mod:`mtlkit.weighting._qp`) instead of the paper's Frank–Wolfe iterations that stop early;
    the weights are multiplied by T so that they sum to T (the project's scale convention: for
    T identical gradients g the update is T·g). With "l2" the weights depend only on the
    directions of the task gradients. "loss" and "loss+" need the losses: :meth:`backward` has
    them; :meth:`aggregate` takes them as ``losses=``.

    The min-norm point of the segment between g₁ = (1, 0) and g₂ = (−1, 1) is 0.6·g₁ + 0.4·g₂
    = (0.2, 0.4); times T = 2:

    >>> import torch
    >>> MGDA().aggregate(torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64))
    tensor([0.4000, 0.8000], dtype=torch.float64)
    """

    name = "mgda"

    def __init__(
        self, normalization: str = "none", jacobian: str = "shared", update_every: int = 1
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"MGDA: option 'normalization' must be one of {', '.join(NORMALIZATIONS)}, "
                f"got '{normalization}'"
            )
        self.normalization = normalization
        self._losses: Tensor | None = None

    def stack_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        stacked = super().stack_losses(losses)
        self._losses = stacked.detach()
        return stacked

    def aggregate(self, jacobian: Tensor, /, losses: Tensor | None = None) -> Tensor:
        """The update from the T × P Jacobian; ``losses`` (length T) for the loss-based
        normalisations."""
        if losses is not None:
            self._losses = losses.detach()
        return super().aggregate(jacobian)

    def normalizers(self, gram: np.ndarray) -> np.ndarray:
        """The n_i of step 1 (1 for a zero gradient, whose row stays zero)."""
        t = gram.shape[0]
        norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
        if self.normalization == "none":
            return np.ones(t)
        if self.normalization == "l2":
            return np.where(norms > 0, norms, 1.0)
        if self._losses is None:
            raise ConfigError(
                f"MGDA: normalization '{self.normalization}' needs the task losses; "
                "use backward(), or pass losses= to aggregate()"
            )
        loss = self._losses.double().cpu().numpy()
        if loss.shape != (t,):
            raise TaskDataError(f"MGDA: got {loss.shape[0]} losses for {t} task gradients")
        if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
            raise TaskDataError(
                f"MGDA: normalization '{self.normalization}' needs positive finite losses, "
                f"got {loss.tolist()}"
            )
        n = loss if self.normalization == "loss" else loss * norms
        return np.where(n > 0, n, 1.0)

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram_to_numpy(gram, self)
        try:
            n = self.normalizers(g.matrix)
        finally:
            self._losses = None  # the losses of this step only
        alpha = simplex_qp(g if self.normalization == "none" else g.rescaled(n))
        return weights_to_torch(len(alpha) * alpha, gram)

    def hyperparameters(self) -> dict[str, Any]:
        return {"normalization": self.normalization, **super().hyperparameters()}
