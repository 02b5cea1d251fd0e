"""What UPGrad and DualProj share: a preference vector over the tasks, and its checks.

Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlkit.errors import ConfigError
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


class PreferenceWeighting(GramianWeighting):
    """A Gramian method with an optional preference vector w over the tasks (ones by default)."""

    def __init__(
        self,
        pref_vector: Sequence[float] | None = None,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.pref_vector = check_pref_vector(type(self).__name__, pref_vector)

    def on_bind(self) -> None:
        assert self.tasks is not None
        pref_weights(self, self.pref_vector, len(self.tasks))

    def preference(self, t: int) -> np.ndarray:
        """w for T tasks."""
        return pref_weights(self, self.pref_vector, t)

    def hyperparameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.pref_vector is not None:
            params["pref_vector"] = self.pref_vector
        return {**params, **super().hyperparameters()}
