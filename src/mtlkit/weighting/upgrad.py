"""UPGrad: the mean of the task gradients each projected onto the dual cone of the Jacobian.

Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting._qp import gram_to_numpy, lower_bounded_qps, weights_to_torch
from mtlkit.weighting.base import WEIGHTINGS
from mtlkit.weighting.gradient import GramianWeighting


def check_pref_vector(method: str, pref: Sequence[float] | None) -> list[float] | None:
    """The preference vector as floats; a ConfigError unless every entry is finite and ≥ 0."""
    if pref is None:
        return None
    values = [float(w) for w in pref]
    if not values or any(not (math.isfinite(w) and w >= 0) for w in values):
        raise ConfigError(
            f"{method}: option 'pref_vector' must be a non-empty list of finite weights ≥ 0, "
            f"got {list(pref)}"
        )
    return values


def pref_weights(method: GramianWeighting, pref: list[float] | None, t: int) -> np.ndarray:
    """The preference vector for T tasks (ones by default); an error on a length mismatch."""
    if pref is None:
        return np.ones(t)
    if len(pref) != t:
        raise ConfigError(
            f"{method}: option 'pref_vector' has {len(pref)} entries but there are {t} tasks"
        )
    return np.asarray(pref, dtype=np.float64)


@WEIGHTINGS.register("upgrad")
class UPGrad(GramianWeighting):
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
    """

    name = "upgrad"

    def __init__(
        self,
        pref_vector: Sequence[float] | None = None,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.pref_vector = check_pref_vector("UPGrad", pref_vector)

    def on_bind(self) -> None:
        assert self.tasks is not None
        pref_weights(self, self.pref_vector, len(self.tasks))

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram_to_numpy(gram, self)
        t = g.shape[0]
        w = pref_weights(self, self.pref_vector, t)
        lowers = np.diag(w)[w > 0]  # row k: w_i e_i for each task i with w_i > 0
        alpha = lower_bounded_qps(g, lowers).sum(axis=0) if len(lowers) else np.zeros(t)
        return weights_to_torch(alpha, gram)

    def hyperparameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.pref_vector is not None:
            params["pref_vector"] = self.pref_vector
        return {**params, **super().hyperparameters()}
