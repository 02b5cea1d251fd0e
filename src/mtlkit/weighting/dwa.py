"""Dynamic weight average (DWA): weights from the rate at which each task's loss falls.

Liu, Johns & Davison (2019), "End-to-End Multi-Task Learning with Attention", CVPR 2019
(the MTAN paper, Section 3.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlkit.errors import TaskDataError
from mtlkit.weighting._loss_common import check_real
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting, StateField


@WEIGHTINGS.register("dwa")
class DWA(LossWeighting):
    """Dynamic weight average.

    With L̄_i(e) the mean training loss of task i over epoch e (given by the training loop to
    :meth:`on_epoch_end`), the weights during epoch t are::

        r_i = L̄_i(t−1) / L̄_i(t−2)
        λ_i = T · exp(r_i / temperature) / Σ_j exp(r_j / temperature)

    and λ_i = 1 for the first two epochs. A task whose loss falls slowly (r_i near 1) gets a
    larger weight. Scale: the weights sum to the number of tasks T (EW's sum), as in the paper.

    Args:
        temperature: the softmax temperature T of the paper (2); larger is closer to EW.
    """

    name = "dwa"
    stateful = True
    #: the mean losses of the last two epochs, oldest first, in task order: history[epoch][task];
    #: in a partial step the softmax runs over the present tasks
    state_fields: ClassVar[Mapping[str, StateField]] = {
        "history": StateField("list", axes=(1,), default=[])
    }
    history: list[list[float]]

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_real("DWA", "temperature", temperature, low=0.0, strict=True)

    def on_epoch_end(self, epoch: int, mean_losses: Mapping[str, float]) -> None:
        self.bind(list(mean_losses))
        assert self.tasks is not None
        values = [float(mean_losses[t]) for t in self.tasks]
        for task, value in zip(self.tasks, values, strict=True):
            if not (math.isfinite(value) and value > 0):
                raise TaskDataError(
                    f"DWA: task '{task}': mean epoch loss must be finite and > 0, got {value}"
                )
        self.history = [*self.history, values][-2:]

    def weights(self, losses: Tensor) -> Tensor:
        if len(self.history) < 2:
            return torch.ones_like(losses)
        before, last = (torch.tensor(h, dtype=torch.float64) for h in self.history)
        ratio = last / before
        w = len(ratio) * torch.softmax(ratio / self.temperature, dim=0)
        return w.to(dtype=losses.dtype, device=losses.device)

    def hyperparameters(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
