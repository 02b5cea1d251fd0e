"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task Learning",
ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.weighting._loss_common import check_real, task_parameter
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField


@WEIGHTINGS.register("imtl_l")
class IMTLL(LossWeighting):
    """IMTL-L: L = Σ_i e^{s_i} L_i − s_i, with the loss scales s_i learned with the model.

    The gradient in s_i is e^{s_i} L_i − 1, so the scales are driven to the fixed point
    e^{s_i} L_i = 1: every scaled loss is brought to 1, whatever the raw loss's scale (the
    objective is convex in s_i, so the fixed point is its minimum). The s_i are
    :meth:`parameters` of the method: add them to the optimiser (call ``bind(task_names)``
    first, as the Trainer does, since there is one per task).

    Scale: task i has weight e^{s_i}, 1 at the start (EW). Only IMTL-L is implemented here;
    the paper's gradient half (IMTL-G) is a gradient method of its own.

    Args:
        init_scale: initial s_i (0: weight 1).
    """

    name = "imtl_l"
    stateful = True
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "scales": StateField("parameter", axes=(0,), init="init_scale"),
    }
    scales: nn.Parameter | None

    def __init__(self, init_scale: float = 0.0) -> None:
        super().__init__()
        self.init_scale = check_real("IMTLL", "init_scale", init_scale)

    def on_bind(self) -> None:
        assert self.tasks is not None
        if self.scales is None or self.scales.numel() != len(self.tasks):
            self.scales = task_parameter(len(self.tasks), self.init_scale)

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.scales is not None
        self.to(losses.device)  # the parameter follows the losses, in place
        s = self.scales.to(losses.dtype)
        return (torch.exp(s) * losses - s).sum(), torch.exp(s.detach())

    def hyperparameters(self) -> dict[str, Any]:
        return {"init_scale": self.init_scale}
