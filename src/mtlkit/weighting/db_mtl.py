"""DB-MTL: dual balancing of loss scales and gradient magnitudes.

Lin, Jiang, Ye, Zhang, Chen, Chen, Liu & Kwok (2023), "Dual-Balancing for Multi-Task
Learning", arXiv:2308.12029.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.weighting._loss_common import check_positive_losses, check_real
from mtlkit.weighting.base import WEIGHTINGS, StateField, StepContext, StepRecord
from mtlkit.weighting.gradient import JacobianAggregator

#: added to each loss before the logarithm (the authors' value)
LOG_EPS = 1e-8
#: added to the gradient norms before dividing by them
NORM_EPS = 1e-8


@WEIGHTINGS.register("db_mtl")
class DBMTL(JacobianAggregator):
    """DB-MTL: log-transformed losses, then gradients rescaled to the largest magnitude.

    At step k, with g_i = ∇_θ log(L_i + ε) on the shared parameters θ::

        loss-scale balancing:      L_i → log(L_i + ε)
        ĝ_i ← β_k ĝ_i + (1 − β_k) g_i,  β_k = β / k^β_sigma       (ĝ_i = 0 at the start)
        α_i = max_j ‖ĝ_j‖ / ‖ĝ_i‖
        update = Σ_i α_i ĝ_i

    so every task moves θ with the same gradient magnitude, that of the largest one, and the
    update has EW's (sum) scale. Task-specific parameters get ∇ log(L_i + ε), their own task's
    gradient of the log-loss. The recorded weight of task i is α_i, the factor applied to its
    averaged log-loss gradient ĝ_i.

    Deviation: the Jacobian is always taken on the shared parameters (the gradient average
    across batches has no meaning on the representation, whose rows change with the batch).

    Args:
        beta: the averaging factor β of the gradients (0.9).
        beta_sigma: the decay exponent β_sigma of β_k (0: constant β).
    """

    name = "db_mtl"
    stateful = True
    gives_weights = True  # α_i, recorded as the task weights
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "ema_step": StateField("int"),
        "grad_average": StateField("tensor", axes=(0,), fill=0.0),
        "_alpha": StateField("tensor", saved=False),  # this step's α
    }
    ema_step: int
    grad_average: Tensor | None
    _alpha: Tensor | None

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__(jacobian="shared", update_every=1)
        self.beta = check_real("DBMTL", "beta", beta, low=0.0, high=1.0, high_strict=True)
        self.beta_sigma = check_real("DBMTL", "beta_sigma", beta_sigma, low=0.0)

    def step(self, ctx: StepContext, /) -> StepRecord:
        """The gradient step on the log-losses log(L_i + ε)."""
        assert self.tasks is not None
        check_positive_losses(str(self), self.tasks, ctx.stacked + LOG_EPS)
        log_stacked = torch.log(ctx.stacked + LOG_EPS)
        log_losses = dict(zip(self.tasks, log_stacked.unbind(), strict=True))
        return super().step(replace(ctx, losses=log_losses, stacked=log_stacked))

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        self.ema_step += 1
        beta_k = self.beta / self.ema_step**self.beta_sigma
        if self.grad_average is None or self.grad_average.shape != jacobian.shape:
            self.grad_average = torch.zeros_like(jacobian)
        average = self.grad_average.to(device=jacobian.device, dtype=jacobian.dtype)
        self.grad_average = beta_k * average + (1 - beta_k) * jacobian
        norms = self.grad_average.norm(dim=1)
        self._alpha = norms.max() / (norms + NORM_EPS)
        return self._alpha @ self.grad_average

    def last_weights(self) -> Tensor | None:
        return None if self._alpha is None else self._alpha.detach()

    def hyperparameters(self) -> dict[str, Any]:
        return {"beta": self.beta, "beta_sigma": self.beta_sigma}
