"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), "Towards Impartial Multi-task Learning",
ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.weighting._loss_common import check_real, follow_device, task_parameter
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, TaskState


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
    task_state: ClassVar[Mapping[str, TaskState]] = {"scales": TaskState((0,))}

    def __init__(self, init_scale: float = 0.0) -> None:
        super().__init__()
        self.init_scale = check_real("IMTLL", "init_scale", init_scale)
        self.scales: nn.Parameter | None = None

    def on_bind(self) -> None:
        assert self.tasks is not None
        if self.scales is None or self.scales.numel() != len(self.tasks):
            self.scales = task_parameter(len(self.tasks), self.init_scale)

    def parameters(self) -> list[nn.Parameter]:
        if self.scales is None:
            raise ConfigError(
                "IMTLL: its loss scales are created per task; call bind(task_names) before "
                "parameters() so the optimiser gets them"
            )
        return [self.scales]

    def combine(self, losses: Tensor) -> tuple[Tensor, Tensor]:
        assert self.scales is not None
        follow_device(self.scales, losses)
        s = self.scales.to(losses.dtype)
        return (torch.exp(s) * losses - s).sum(), torch.exp(s.detach())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.scales is not None:
            state["scales"] = self.scales.detach().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "scales" in state:
            assert self.scales is not None
            with torch.no_grad():
                self.scales.copy_(torch.as_tensor(state["scales"]))

    def reset(self) -> None:
        super().reset()
        if self.scales is not None:
            with torch.no_grad():
                self.scales.fill_(self.init_scale)

    def hyperparameters(self) -> dict[str, Any]:
        return {"init_scale": self.init_scale}
