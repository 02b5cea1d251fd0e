"""Equal weighting (EW): L = Σ_i L_i, the baseline every method is measured against."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting.base import (
    WEIGHTINGS,
    LossWeighting,
    StepContext,
    StepRecord,
    backward_scaled,
)


@WEIGHTINGS.register("ew")
class EW(LossWeighting):
    """Equal weights: every task's loss has weight 1, so the update is the sum of the task
    gradients. One backward pass; the lower bound of a step's cost."""

    name = "ew"
    static_weights = True  # all 1: a point of the static weights' search space

    def weights(self, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)

    def step(self, ctx: StepContext, /) -> StepRecord:
        """Σ_i L_i, back-propagated: no weight vector, and the record's weights are known
        without reading anything back from the device."""
        backward_scaled(ctx.stacked.sum(), ctx.loss_scale)
        assert self.tasks is not None
        return StepRecord(weights=dict.fromkeys(self.tasks, 1.0))
