"""GradVac: Gradient Vaccine.

Wang, Tsvetkov, Firat, Cao (2021). "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models". ICLR 2021.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.weighting._manipulation import check_real, check_seed
from mtlkit.weighting.base import WEIGHTINGS, StateField
from mtlkit.weighting.gradient import GramianWeighting


@WEIGHTINGS.register("gradvac")
class GradVac(GramianWeighting):
    """Steer each pair of task gradients toward an adaptive similarity goal.

    Algorithm 1 of the paper, for each task i::

        g_i' ← g_i
        for j ≠ i, in random order:
            φ_ij = cos(g_i', g_j)
            if φ_ij < φ̂_ij:
                g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1−φ_ij²) − φ_ij √(1−φ̂_ij²))
                               / (‖g_j‖ √(1−φ̂_ij²)) · g_j
            φ̂_ij ← (1 − β) φ̂_ij + β φ_ij            (EMA of the observed similarity)
        update = Σ_i g_i'

    The correction makes cos(g_i', g_j) exactly φ̂_ij. The targets φ̂ start at 0 (so the first
    steps act like PCGrad) and are the method's state.

    Deviations from the paper: one similarity per task pair over the whole Jacobian (the paper
    also tries per-layer granularity); a pair where g_i' or g_j is zero is skipped and its
    target left unchanged (the cosine is undefined); √(1−φ̂²) is floored at 1e-12 so a
    target that reached 1 cannot divide by zero.

    Every g_i' is a combination of the rows of J, so the method runs on G = J Jᵀ (as
    :class:`~mtlkit.weighting.pcgrad.PCGrad` does): the same algorithm, at O(T³) cost.

    Scale: a sum over tasks, like EW (T identical gradients g give T·g); when every pair meets
    its target the update is Σ_i g_i.

    Randomness: the order of the j's is drawn from a ``torch.Generator`` seeded with ``seed``
    and owned by the method, whose state is saved with the targets.
    """

    name = "gradvac"
    stateful = True
    #: the T × T targets φ̂; a pair first met in a partial step starts at 0
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "_generator": StateField("generator", init="seed"),
        "_targets": StateField("tensor", key="targets", axes=(0, 1), fill=0.0, cpu64=True),
    }
    _targets: Tensor | None

    def __init__(
        self,
        beta: float = 1e-2,
        seed: int = 0,
        jacobian: str = "shared",
        update_every: int = 1,
    ) -> None:
        super().__init__(jacobian=jacobian, update_every=update_every)
        self.beta = check_real("GradVac", "beta", beta, low=0.0, high=1.0, low_open=True)
        self.seed = check_seed("GradVac", seed)
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def targets(self) -> Tensor | None:
        """The T × T similarity goals φ̂ (row i: task i's goals toward each j); None before the
        first step."""
        return None if self._targets is None else self._targets.clone()

    def weights_from_gram(self, gram: Tensor, /) -> Tensor:
        g = gram.detach().to("cpu", torch.float64)
        t = g.shape[0]
        if self._targets is None:
            self._targets = torch.zeros(t, t, dtype=torch.float64)
        elif self._targets.shape != (t, t):
            raise TaskDataError(
                f"GradVac: its targets are for {self._targets.shape[0]} tasks, got {t} gradients"
            )
        goals = self._targets
        norms = g.diagonal().clamp_min(0.0).sqrt()
        coef = torch.eye(t, dtype=torch.float64)  # row i: g_i' = coef[i] @ J
        for i in range(t):
            others = [j for j in range(t) if j != i]
            for k in torch.randperm(len(others), generator=self._generator).tolist():
                j = others[k]
                sq_norm_i = float(coef[i] @ g @ coef[i])
                norm_i = math.sqrt(sq_norm_i) if sq_norm_i > 0 else 0.0
                norm_j = float(norms[j])
                if norm_i == 0.0 or norm_j == 0.0:
                    continue
                phi = min(max(float(coef[i] @ g[:, j]) / (norm_i * norm_j), -1.0), 1.0)
                goal = float(goals[i, j])
                if phi < goal:
                    root_goal = max(math.sqrt(max(1.0 - goal * goal, 0.0)), 1e-12)
                    root_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                    step = norm_i * (goal * root_phi - phi * root_goal) / (norm_j * root_goal)
                    coef[i, j] += step
                goals[i, j] = (1.0 - self.beta) * goal + self.beta * phi
        return coef.sum(dim=0).to(gram.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "seed": self.seed, **super().hyperparameters()}
