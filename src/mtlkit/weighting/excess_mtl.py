"""ExcessMTL: robust task weighting by estimated excess risks.

He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao (2024), "Robust Multi-Task Learning with
Excess Risks", ICML 2024.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.weighting._loss_common import check_real
from mtlkit.weighting.base import WEIGHTINGS, StateField
from mtlkit.weighting.gradient import JacobianAggregator

#: added to the accumulated squared gradients before the square root (the authors' value)
ADAGRAD_EPS = 1e-7


@WEIGHTINGS.register("excess_mtl")
class ExcessMTL(JacobianAggregator):
    """ExcessMTL: weights raised on the tasks furthest from their own optimum.

    The excess risk of task i, L_i(θ) − L_i*, is estimated from a second-order expansion with
    a diagonal Hessian approximated as in Adagrad. At step k, with g_i the gradient of task i
    on the shared parameters::

        H_i ← H_i + g_i ⊙ g_i                          (Adagrad accumulator, 0 at the start)
        e_i = g_iᵀ diag(√(H_i + ε))⁻¹ g_i              (excess-risk estimate)
        r_i = e_i / e_i⁽¹⁾                              (relative to the first estimate)
        w_i ← w_i · exp(η r_i),  w ← T · w / Σ_j w_j    (exponentiated gradient, from k = 2)
        update = Σ_i w_i g_i

    Tasks with a large remaining excess risk get larger weights, while tasks that are only
    noisy (large loss, small excess) do not dominate. Scale: the weights sum to T (EW's sum),
    1 each at the start. Task-specific parameters get their own task's gradient.

    Deviations: as in the authors' code, each estimate is divided by the task's first one so
    that tasks with different loss scales are comparable (a task whose first estimate is 0
    takes its first positive one), and the weights are kept in log space for stability. The
    Jacobian is always taken on the shared parameters, where the Adagrad accumulators live.

    Args:
        step_size: the step size η of the exponentiated-gradient update (0.01).
    """

    name = "excess_mtl"
    stateful = True
    #: a task first seen in a partial step starts with an empty accumulator, no first
    #: estimate (0 marks it unknown) and log-weight 0
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "grad_sq_sum": StateField("tensor", axes=(0,), fill=0.0),
        "initial_excess": StateField("tensor", axes=(0,), fill=0.0, cpu64=True),
        "log_weights": StateField("tensor", axes=(0,), fill=0.0, cpu64=True),
    }
    grad_sq_sum: Tensor | None
    initial_excess: Tensor | None
    log_weights: Tensor | None
    gives_weights = True  # the update is exactly Σ_i w_i g_i

    def __init__(self, step_size: float = 0.01) -> None:
        super().__init__(jacobian="shared", update_every=1)
        self.step_size = check_real("ExcessMTL", "step_size", step_size, low=0.0, strict=True)

    def _clear(self) -> None:
        self.grad_sq_sum = None
        self.initial_excess = None
        self.log_weights = None

    def aggregate(self, jacobian: Tensor, /) -> Tensor:
        t = jacobian.shape[0]
        if self.grad_sq_sum is None or self.grad_sq_sum.shape != jacobian.shape:
            self._clear()
            self.grad_sq_sum = torch.zeros_like(jacobian)
            self.log_weights = torch.zeros(t, dtype=torch.float64)
        assert self.log_weights is not None
        self.grad_sq_sum = self.grad_sq_sum.to(jacobian) + jacobian.square()
        excess = (jacobian.square() / (self.grad_sq_sum + ADAGRAD_EPS).sqrt()).sum(dim=1)
        excess = excess.detach().to("cpu", torch.float64)
        if self.initial_excess is None:
            self.initial_excess = excess
        else:
            known = self.initial_excess > 0
            self.initial_excess = torch.where(known, self.initial_excess, excess)
            ratio = torch.where(
                self.initial_excess > 0,
                excess / self.initial_excess.clamp_min(torch.finfo(torch.float64).tiny),
                torch.zeros_like(excess),
            )
            log_w = self.log_weights + self.step_size * ratio
            self.log_weights = log_w - log_w.max()
        return self.current_weights().to(jacobian) @ jacobian

    def current_weights(self) -> Tensor:
        """The current task weights w (sum T), in task order."""
        assert self.log_weights is not None
        return len(self.log_weights) * torch.softmax(self.log_weights, dim=0)

    def last_weights(self) -> Tensor | None:
        return None if self.log_weights is None else self.current_weights()

    def hyperparameters(self) -> dict[str, Any]:
        return {"step_size": self.step_size}
