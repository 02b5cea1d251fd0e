"""Scale-invariant loss (SI): minimise Σ_i log L_i.

Used as a baseline by Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya (2022),
"Multi-Task Learning as a Bargaining Game", ICML 2022.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting._loss_common import check_positive_losses
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("si")
class SI(LossWeighting):
    """Scale-invariant loss: L = Σ_i log L_i, so ∇L = Σ_i ∇L_i / L_i.

    Multiplying a task's loss by a constant c > 0 adds log c to L and leaves the update
    unchanged, hence the name. Scale: task i has weight 1/L_i (EW's weight 1 when every loss
    is 1). Each loss must be > 0; a TaskDataError names the task otherwise.
    """

    name = "si"

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.tasks is not None
        check_positive_losses(str(self), self.tasks, losses)
        return torch.log(losses).sum(), 1.0 / losses.detach()
