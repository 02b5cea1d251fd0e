"""Geometric loss strategy (GLS): minimise the geometric mean of the task losses.

Chennupati, Sistu, Yogamani & Rawashdeh (2019), "MultiNet++: Multi-Stream Feature Aggregation
and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
"""

from __future__ import annotations

from torch import Tensor

from mtlkit.weighting._loss_common import check_positive_losses
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("gls")
class GLS(LossWeighting):
    """Geometric loss strategy: L = (Π_i L_i)^(1/T).

    ∇L = (L/T) Σ_i ∇L_i / L_i, so task i has weight L/(T L_i): a task with a small loss gets a
    large weight. The product is computed as exp(mean_i log L_i), which neither overflows nor
    underflows. Scale: the paper's; with equal losses every weight is 1/T (the mean, not EW's
    sum). Each loss must be > 0; a TaskDataError names the task otherwise.
    """

    name = "gls"

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.tasks is not None
        check_positive_losses(str(self), self.tasks, losses)
        objective = losses.log().mean().exp()
        weights = objective.detach() / (len(self.tasks) * losses.detach())
        return objective, weights
