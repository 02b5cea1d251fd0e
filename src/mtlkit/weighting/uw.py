"""Uncertainty weighting (UW): learned homoscedastic task uncertainty.

Kendall, Gal & Cipolla (2018), "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.weighting._loss_common import check_real, task_parameter
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField


@WEIGHTINGS.register("uw")
class UW(LossWeighting):
    """Uncertainty weighting: L = Σ_i L_i / (2σ_i²) + log σ_i, with s_i = log σ_i² learned.

    Written in s_i: L = Σ_i ½ (e^{−s_i} L_i + s_i). For a fixed loss the objective is minimised
    at σ_i² = L_i, where each weighted loss is ½; the gradient in s_i is ½ (1 − e^{−s_i} L_i).
    The s_i are :meth:`parameters` of the method: add them to the optimiser (call
    ``bind(task_names)`` first, as the Trainer does, since there is one per task).

    Deviation: the paper's classification form (L_i/σ_i² + log σ_i) is not used; every task
    takes the regression form above, as is usual in MTL libraries. Scale: task i has weight
    e^{−s_i}/2, i.e. ½ at the start (half of EW's weight 1).

    Args:
        init_log_var: initial s_i = log σ_i² (0: σ = 1).
    """

    name = "uw"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "log_vars": StateField("parameter", axes=(0,), init="init_log_var"),
    }
    log_vars: nn.Parameter | None

    def __init__(self, init_log_var: float = 0.0) -> None:
        super().__init__()
        self.init_log_var = check_real("UW", "init_log_var", init_log_var)

    def on_bind(self) -> None:
        assert self.tasks is not None
        if self.log_vars is None or self.log_vars.numel() != len(self.tasks):
            self.log_vars = task_parameter(len(self.tasks), self.init_log_var)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.log_vars is not None
        self.to(losses.device)  # the parameter follows the losses, in place
        s = self.log_vars.to(losses.dtype)
        objective = 0.5 * (torch.exp(-s) * losses + s).sum()
        return objective, 0.5 * torch.exp(-s.detach())

    def hyperparameters(self) -> dict[str, Any]:
        return {"init_log_var": self.init_log_var}
