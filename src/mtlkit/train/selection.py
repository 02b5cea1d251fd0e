"""Model selection and early stopping: what they watch on the validation split (:class:`Monitor`),
and the best epoch so far (:class:`Selection`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from mtlkit.errors import ConfigError
from mtlkit.tasks import Task, better, get_metric
from mtlkit.train.checkpoint import model_tensors

Metrics = dict[str, dict[str, float]]


@dataclass
class Monitor:
    """What model selection and early stopping watch on the validation split.

    ``loss`` (sum of task losses, lower is better), ``<task>/<metric>``, or ``mean/<metric>``
    (the mean over non-auxiliary tasks that report the metric).
    """

    spec: str
    direction: str = field(init=False)

    def __post_init__(self) -> None:
        if self.spec == "loss":
            self.direction = "min"
            return
        _, _, metric = self.spec.partition("/")
        if not metric:
            raise ConfigError(
                f"monitor '{self.spec}': use 'loss', '<task>/<metric>' or 'mean/<metric>'"
            )
        self.direction = get_metric(metric).direction

    def check(self, tasks: Mapping[str, Task]) -> None:
        """Raise when the monitor names a task or metric the run does not have."""
        if self.spec == "loss":
            return
        scope, _, metric = self.spec.partition("/")
        if scope == "mean":
            if not any(metric in t.metrics and not t.auxiliary for t in tasks.values()):
                raise ConfigError(f"monitor '{self.spec}': no main task reports '{metric}'")
        elif scope not in tasks:
            raise ConfigError(
                f"monitor '{self.spec}': unknown task '{scope}'; tasks: {', '.join(tasks)}"
            )
        elif metric not in tasks[scope].metrics:
            raise ConfigError(
                f"monitor '{self.spec}': task '{scope}' has no metric '{metric}' "
                f"(its metrics: {', '.join(tasks[scope].metrics)})"
            )

    def value(self, results: Metrics, tasks: Mapping[str, Task]) -> float:
        """The watched value in evaluation ``results``."""
        if self.spec == "loss":
            return float(sum(r["loss"] for t, r in results.items() if not tasks[t].auxiliary))
        scope, _, metric = self.spec.partition("/")
        if scope == "mean":
            values = [
                r[metric] for t, r in results.items() if metric in r and not tasks[t].auxiliary
            ]
            return float(sum(values) / len(values))
        return float(results[scope][metric])


@dataclass
class Selection:
    """Model selection and early stopping over a run's epochs.

    Keeps the best value of the :class:`Monitor` so far, its epoch and the model's weights
    then, and counts the epochs since; ``should_stop`` after ``patience`` of them (None: never).
    """

    monitor: Monitor
    patience: int | None = None
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_weights: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be ≥ 1, got {self.patience}")

    def update(
        self, value: float, epoch: int, model: nn.Module | Mapping[str, Tensor]
    ) -> dict[str, Tensor] | None:
        """Record ``epoch``'s monitored value; the model's weights (kept as the best) when it
        is the best so far, else None. ``model``: the model, or its (whole) state dict.

        A non-finite value (NaN or inf, e.g. a metric of a diverged model) is never the best:
        it counts as an epoch without improvement, with a warning naming the epoch.
        """
        if not math.isfinite(value):
            warnings.warn(
                f"epoch {epoch}: the monitored value '{self.monitor.spec}' is {value}; "
                f"counted as no improvement (the best stays epoch {self.best_epoch or 'none'})",
                RuntimeWarning,
                stacklevel=2,
            )
            self.bad_epochs += 1
            return None
        if self.best_value is None or better(value, self.best_value, self.monitor.direction):
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_weights = model_tensors(model)
            return self.best_weights
        self.bad_epochs += 1
        return None

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` epochs have passed without improvement."""
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The selection state of a checkpoint (the best weights are saved on their own)."""
        return {"value": self.best_value, "epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_epoch = state["value"], int(state["epoch"])
        self.bad_epochs = int(state["bad_epochs"])
