"""Static weights: L = Σ_i α_i L_i with user-chosen, fixed α."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from mtlkit.errors import ConfigError
from mtlkit.weighting.base import WEIGHTINGS, LossWeighting


@WEIGHTINGS.register("static")
class Static(LossWeighting):
    """Fixed task weights α given by task name; a task not named gets ``default``.

    Raises a ConfigError when a weight is negative or not finite, and (on first use) when
    ``weights`` names a task the losses do not have.
    """

    name = "static"
    static_weights = True
    takes_task_weights = True

    def __init__(self, weights: Mapping[str, float] | None = None, default: float = 1.0) -> None:
        super().__init__()
        self.alpha = {str(k): float(v) for k, v in (weights or {}).items()}
        self.default = float(default)
        for task, value in [*self.alpha.items(), ("(default)", self.default)]:
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"weighting 'static': weight of task '{task}' is {value}; "
                    "weights must be finite and ≥ 0"
                )

    def use_task_weights(self, weights: Mapping[str, float]) -> None:
        for task, value in weights.items():
            given = self.alpha.get(task)
            if given is not None and given != float(value):
                raise ConfigError(
                    f"weighting 'static': task '{task}' has weight {value} (Task.weight) but "
                    f"the method was given {given}; set one of them"
                )
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"weighting 'static': weight of task '{task}' is {value}; "
                    "weights must be finite and ≥ 0"
                )
            self.alpha[task] = float(value)

    def on_bind(self) -> None:
        assert self.tasks is not None
        unknown = sorted(set(self.alpha) - set(self.tasks))
        if unknown:
            raise ConfigError(
                f"weighting 'static': weights name unknown task(s) {', '.join(unknown)}; "
                f"the tasks are {', '.join(self.tasks)}"
            )

    def weights(self, losses: Tensor) -> Tensor:
        assert self.tasks is not None
        return torch.tensor(
            [self.alpha.get(t, self.default) for t in self.tasks],
            dtype=losses.dtype,
            device=losses.device,
        )

    def hyperparameters(self) -> dict[str, object]:
        params: dict[str, object] = {"weights": self.alpha}
        if self.default != 1.0:
            params["default"] = self.default
        return params
